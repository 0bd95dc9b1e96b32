"""Every bundled distribution's licence is listed and its text collected (issue 25)."""
from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from core.distribution import COMMON_LICENCES_DIR, LicenceIndex, bundled_distributions, collect

ROOT = Path(__file__).resolve().parent.parent


def test_index_lists_every_runtime_requirement_and_no_dev_tool(tmp_path):
    index = collect(tmp_path)
    names = {canonicalize_name(e.name) for e in index.entries}
    direct = []
    for spec in distribution("hemascan").requires:
        req = Requirement(spec)
        try:
            distribution(req.name)
        except PackageNotFoundError:
            continue
        if req.marker is None:  # not an extra
            direct.append(canonicalize_name(req.name))
    assert set(direct) <= names and {"hemascan", "python", "psycopg-binary", "pyside6-essentials", "shiboken6"} <= names
    # what the bundle carries and nothing it does not: the dev and experiment extras stay out
    assert not {"pytest", "ruff", "import-linter", "pgserver", "matplotlib"} & names
    assert names == {"python"} | {canonicalize_name(d.metadata["Name"]) for d in bundled_distributions()}


def test_index_on_disk_reads_back_and_every_text_is_there(tmp_path):
    index = collect(tmp_path)
    again = LicenceIndex.model_validate_json((tmp_path / "index.json").read_text())
    assert again == index and again.hemascan and "LGPL" in again.lgpl_note
    for e in index.entries:
        assert e.licence and (e.files or e.note), e.name
        for f in e.files:
            assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f
    torch = next(e for e in index.entries if e.name == "torch")
    assert any(re.search(r"(^|/)LICEN[CS]E", f) for f in torch.files)
    if (COMMON_LICENCES_DIR / "LGPL-3").is_file():  # PySide6 ships no text: the LGPL 3 it declares is added
        qt = next(e for e in index.entries if e.name.lower().startswith("pyside6"))
        assert "GNU LESSER GENERAL PUBLIC LICENSE" in (tmp_path / qt.files[0]).read_text()
    assert json.loads((tmp_path / "index.json").read_text())["entries"][0]["name"] == "Python"


def test_build_bundles_the_licences_and_the_deb_installs_them():
    spec = (ROOT / "packaging/hemascan.spec").read_text()
    assert "collect(licences_dir)" in spec and 'Path("licences")' in spec
    make_deb = (ROOT / "packaging/linux/make_deb.sh").read_text()
    assert 'cp -a "$BUNDLE/_internal/licences" "$STAGE/usr/share/doc/$PKG/licences"' in make_deb


def test_licences_dialog_lists_them_and_shows_the_selected_text(qtbot):
    from desktop.licences_dialog import LicencesDialog

    dlg = LicencesDialog()
    qtbot.addWidget(dlg)
    assert dlg.table.rowCount() == len(dlg.index.entries) > 20
    row = next(k for k, e in enumerate(dlg.index.entries) if e.name == "torch")
    dlg.table.selectRow(row)
    assert dlg.text.toPlainText().startswith("torch ") and "Copyright" in dlg.text.toPlainText()
