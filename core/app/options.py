"""Option types for the command line: every option is checked by argparse before any work
starts, so a bad value is one sentence and exit code 2 (argparse's), never a traceback or a
job that runs with it (``--batch-size -1``, ``--lease nan``, ``sample --size 100000``).

Each function returns a ``type=`` callable; its ``__name__`` is what argparse names in the
rare message it writes itself."""
from __future__ import annotations

import argparse
import math
import os
from typing import Callable
from core.config import check_db_url
from core.errors import ModelPackageError
from core.models.package import validate_model_name


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = name
    return fn


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """A whole number from ``lo`` to ``hi`` (both included)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number from {lo} to {hi}, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a whole number from {lo} to {hi}, not {text}")
        return value

    return _named(parse, "whole number")


def positive_float(hi: float, lo: float = 0.0) -> Callable[[str], float]:
    """A finite number over ``lo`` and at most ``hi`` (nan, inf and 1e308 are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and lo < value <= hi):
            raise argparse.ArgumentTypeError(f"must be a number over {lo:g} and at most {hi:g}, not {text!r}")
        return value

    return _named(parse, "number")


def fraction(text: str) -> float:
    """A number from 0 to 1, excluding 1 (a share of something)."""
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 up to (not including) 1, not {text!r}")
    return value


def non_empty_path(text: str) -> str:
    """A path that is not empty (``submit ""`` submitted the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a path, not an empty string")
    return text


def existing_folder(text: str) -> str:
    """A path to a folder that exists."""
    non_empty_path(text)
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a folder" if os.path.exists(text) else
                                         f"no folder {text}")
    return text


def name_up_to(limit: int) -> Callable[[str], str]:
    """A name of 1 to ``limit`` printable characters (what the database column holds)."""

    def parse(text: str) -> str:
        name = text.strip()
        if not name:
            raise argparse.ArgumentTypeError("needs a name, not an empty string")
        if not name.isprintable():
            raise argparse.ArgumentTypeError("must be printable characters only (no control characters)")
        if len(name) > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit} characters ({len(name)} given)")
        return name

    return _named(parse, "name")


def model_name(text: str) -> str:
    """A model version's name: it becomes a folder in the registry, so it is checked as the
    registry checks it (core.models.package.validate_model_name) before any training starts."""
    try:
        return validate_model_name(text.strip())
    except ModelPackageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


MODEL_NAME = _named(model_name, "model name")


def db_url(text: str) -> str:
    """A database URL SQLAlchemy can parse."""

    try:
        return check_db_url(non_empty_path(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
