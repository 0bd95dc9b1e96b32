"""hemascan's version: one definition, the installed distribution's metadata.

A release bump changes one line, ``version`` in pyproject.toml; everything that shows a
version (``hemascan --version``, Help > About, the report footer, the .deb, the Windows
installer, the AppStream file) reads it from here or from the built bundle.
"""
from __future__ import annotations

import functools
import tomllib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from pathlib import Path

DISTRIBUTION = "hemascan"
# a source tree that was never installed: the version pyproject.toml gives
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@functools.cache
def hemascan_version() -> str:
    """The version of the installed hemascan (the frozen bundle carries its metadata too);
    a source tree that was never installed reads pyproject.toml; else "unknown"."""
    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"
