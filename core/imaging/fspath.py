"""File paths as stored in the database.

Databases hold UTF-8 text, but POSIX file names are bytes and need not be valid UTF-8.
Python represents undecodable bytes as lone surrogates (U+DC80..U+DCFF), which SQLite
rejects; we store them as private-use characters U+F780..U+F7FF instead, and map back
when opening the file. Valid names (ASCII or not) are stored unchanged.
"""
from __future__ import annotations

_SURR, _PUA = 0xDC00, 0xF700


def to_db(path: str) -> str:
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "".join(chr(_PUA + (ord(c) - _SURR)) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in path)


def to_fs(stored: str) -> str:
    if not any(0xF780 <= ord(c) <= 0xF7FF for c in stored):
        return stored
    return "".join(chr(_SURR + (ord(c) - _PUA)) if 0xF780 <= ord(c) <= 0xF7FF else c for c in stored)


def display(path: str) -> str:
    """A printable form (undecodable bytes shown as \\xNN)."""
    return to_fs(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
