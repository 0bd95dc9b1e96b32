"""hemascan as an installed distribution: its version, and the licences of what it bundles.

**Version** (one definition): the installed distribution's metadata. A release bump changes one
line, ``version`` in pyproject.toml; everything that shows a version (``hemascan --version``,
Help > About, the report footer, the .deb, the Windows installer, the AppStream file) reads it
from here or from the built bundle.

**Licences** (issue 25): at build time (packaging/hemascan.spec) :func:`collect` walks hemascan's
runtime requirements (the installed distributions' metadata, markers evaluated, extras left out)
and copies each one's licence files into ``licences/`` of the bundle with an index; the .deb puts
the same folder in /usr/share/doc/. Help > Licences reads the index (:func:`installed_licences`);
a source tree that was never built collects them from the running environment instead. Python
itself is listed too (the bundle carries its interpreter). Where a distribution ships no licence
text (PySide6-Essentials and shiboken6 declare LGPL-3.0 in their metadata but carry no file), the
text of the licence it declares is taken from the build host's /usr/share/common-licenses when it
is there, and the index says so.
"""
from __future__ import annotations

import functools
import json
import re
import shutil
import sys
import sysconfig
import tomllib
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from importlib.metadata import version as distribution_version
from pathlib import Path
from pathlib import PurePosixPath

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field


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




INDEX = "index.json"
FOLDER = "licences"
# a file whose name says it is a licence, a notice or the copying terms
_LICENCE_FILE = re.compile(r"(^|/)(licen[cs]e|copying|notice|copyright|authors)[^/]*$", re.I)
# a declared licence -> the Debian common-licenses text that is that licence
_COMMON_LICENCES = {"LGPL-3.0": "LGPL-3", "GPL-3.0": "GPL-3", "GPL-2.0": "GPL-2", "LGPL-2.1": "LGPL-2.1",
                    "Apache-2.0": "Apache-2.0", "Apache Software License": "Apache-2.0", "MPL-2.0": "MPL-2.0"}
COMMON_LICENCES_DIR = Path("/usr/share/common-licenses")
# How the LGPL's terms are met for Qt (shown with the list and in docs/packaging.md)
LGPL_NOTE = ("Qt and Qt for Python (PySide6, shiboken6) are used under the GNU LGPL version 3: they are "
             "bundled unmodified as shared libraries (in the installation's PySide6 folder), which a "
             "user may replace with their own build of the same version; their source is available "
             "from https://download.qt.io/official_releases/QtForPython/.")


class LicenceEntry(BaseModel):
    """One bundled distribution in the index."""

    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    licence: str = Field(description="what its metadata declares (SPDX expression, License field or classifiers)")
    files: list[str] = Field(default_factory=list, description="its licence texts, relative to the index's folder")
    note: str = ""


class LicenceIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hemascan: str
    entries: list[LicenceEntry]
    lgpl_note: str = LGPL_NOTE


def _declared(dist: Distribution) -> str:
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return expression.strip()
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) < 120:
        return text
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return " / ".join(classifiers)
    return "see its licence files" if text else "not declared"


def bundled_distributions(root: str = DISTRIBUTION) -> list[Distribution]:
    """``root`` and every distribution it needs at run time (extras left out), installed here."""
    seen: dict[str, Distribution] = {}
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # a requirement for another platform or Python
            continue
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
                for extra in req.extras:  # e.g. psycopg[binary] -> psycopg-binary
                    todo.extend(dist_requires_for_extra(req.name, extra))
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def dist_requires_for_extra(name: str, extra: str) -> list[str]:
    """The distributions ``name[extra]`` adds."""
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return []
    out = []
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is not None and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def _licence_files(dist: Distribution) -> list[tuple[PurePosixPath, Path]]:
    """(name inside the distribution, file on disk) of each licence text it ships."""
    out = []
    for f in dist.files or []:
        if _LICENCE_FILE.search(str(f)) and not str(f).endswith((".py", ".pyc", ".pyi")):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                out.append((PurePosixPath(str(f)), path))
    return out


def _python_entry() -> tuple[LicenceEntry, list[tuple[PurePosixPath, Path]]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(PurePosixPath("LICENSE.txt"), stdlib / "LICENSE.txt")] if (stdlib / "LICENSE.txt").is_file() else []
    entry = LicenceEntry(name="Python", version=sys.version.split()[0], licence="PSF-2.0",
                         note="" if texts else "the interpreter's LICENSE.txt was not found on the build host")
    return entry, texts


def collect(out_dir: Path | None = None, root: str = DISTRIBUTION) -> LicenceIndex:
    """The licence index of everything bundled; with ``out_dir``, the texts are copied there
    (``out_dir/NAME-VERSION/...``) and the index written as ``out_dir/index.json``."""
    pairs = [_python_entry()]
    for dist in bundled_distributions(root):
        name, version = dist.metadata["Name"], dist.version
        entry = LicenceEntry(name=name, version=version, licence=_declared(dist))
        texts = _licence_files(dist)
        if not texts:
            common = next((v for k, v in _COMMON_LICENCES.items() if k in entry.licence), None)
            if common and (COMMON_LICENCES_DIR / common).is_file():
                texts = [(PurePosixPath(common), COMMON_LICENCES_DIR / common)]
                entry.note = f"ships no licence text: the {common} text it declares is added"
            else:
                entry.note = "ships no licence text; its metadata declares the licence above"
        pairs.append((entry, texts))
    entries = []
    for entry, texts in pairs:
        folder = f"{canonicalize_name(entry.name)}-{entry.version}"
        for inner, path in texts:
            rel = PurePosixPath(folder) / inner
            entry.files.append(str(rel) if out_dir is not None else str(path))
            if out_dir is not None:
                target = Path(out_dir).joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        entries.append(entry)
    index = LicenceIndex(hemascan=hemascan_version(), entries=entries)
    if out_dir is not None:
        Path(out_dir, INDEX).write_text(json.dumps(index.model_dump(), indent=1), encoding="utf-8")
    return index


def bundle_folder() -> Path | None:
    """The licences folder of a built (frozen) app, or None when running from source."""
    base = getattr(sys, "_MEIPASS", None)
    return Path(base) / FOLDER if base else None


def installed_licences() -> tuple[LicenceIndex, Path | None]:
    """The index the build wrote (and its folder, for the texts), or one collected from the
    running environment (file paths absolute) when running from source."""
    folder = bundle_folder()
    if folder is not None and (folder / INDEX).is_file():
        return LicenceIndex.model_validate_json((folder / INDEX).read_text(encoding="utf-8")), folder
    return collect(None), None


def licence_text(entry: LicenceEntry, folder: Path | None, limit: int = 400_000) -> str:
    """Every licence text of ``entry``, one after the other (files named in the index)."""
    parts = []
    for name in entry.files:
        path = Path(name) if folder is None else folder.joinpath(*PurePosixPath(name).parts)
        try:
            parts.append(f"==== {PurePosixPath(name).name} ====\n{path.read_text(encoding='utf-8', errors='replace')}")
        except OSError as exc:
            parts.append(f"==== {name}: cannot be read ({exc.strerror or exc}) ====")
    text = "\n\n".join(parts) or entry.note
    return text[:limit]


if __name__ == "__main__":  # python -m core.distribution OUT_DIR  (the build does this through the spec)
    result = collect(Path(sys.argv[1]))
    print(f"{len(result.entries)} distributions, {sum(len(e.files) for e in result.entries)} licence files "
          f"-> {sys.argv[1]}")