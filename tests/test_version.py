"""One version (issue 25): the package metadata, shown by --version, About, the report footer,
and taken by the .deb, the AppStream file and the Windows installer from the bundle."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import core.distribution
from core.app.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bumped(monkeypatch):
    """A release bump as the installed metadata would show it."""
    monkeypatch.setattr(core.distribution, "distribution_version", lambda name: "9.8.7")
    core.distribution.hemascan_version.cache_clear()
    yield "9.8.7"
    core.distribution.hemascan_version.cache_clear()


def test_version_is_the_installed_distributions():
    import tomllib
    from importlib.metadata import version

    core.distribution.hemascan_version.cache_clear()
    assert core.distribution.hemascan_version() == version("hemascan")
    # the one line a release bump changes (an editable install reads it when reinstalled)
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == version("hemascan")


def test_source_tree_never_installed_reads_pyproject(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(core.distribution, "distribution_version", missing)
    core.distribution.hemascan_version.cache_clear()
    try:
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", core.distribution.hemascan_version())
    finally:
        core.distribution.hemascan_version.cache_clear()


def test_dash_dash_version_prints_it_and_exits_0(bumped, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"hemascan {bumped}"


def test_installed_command_line_says_its_version():
    exe = Path(sys.executable).parent / "hemascan"
    if not exe.is_file():
        pytest.skip(f"no hemascan script next to {sys.executable} (the package is not installed in this venv)")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"hemascan {core.distribution.hemascan_version()}", r.stderr


def test_help_of_every_command_formats():
    """`hemascan --help` crashed with a traceback: the differential's text has a literal "%"."""
    parser = build_parser()
    assert "--self-test" in parser.format_help() and "--version" in parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command")
    import argparse

    for name, p in sub.choices.items():
        assert name in p.format_help()
        # every option says what it does (several of train's and retrain's said nothing)
        silent = [a.option_strings or a.dest for a in p._actions if not a.help and not isinstance(a, argparse._HelpAction)]
        assert silent == [], (name, silent)


def test_about_and_report_footer_say_the_bumped_version(bumped, qtbot, tmp_path):
    from PySide6.QtGui import QPageSize, QPdfWriter, QTextDocument

    from desktop.report import paint_pages
    from desktop.window_menus import HelpMenu

    ctl = SimpleNamespace(version=None, paths=SimpleNamespace(data_dir=tmp_path, logs=tmp_path / "logs"))
    assert f"<h3>hemascan {bumped}</h3>" in HelpMenu(ctl, None).about_text()
    doc = QTextDocument()
    doc.setHtml("<p>a case</p>")
    writer = QPdfWriter(str(tmp_path / "r.pdf"))
    writer.setPageSize(QPageSize(QPageSize.A4))
    paint_pages(doc, writer, "Case 7")
    del writer
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) is not installed: the footer's text cannot be read back")
    text = subprocess.run(["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True).stdout
    assert f"hemascan {bumped}" in text


def test_packaging_files_carry_no_version_of_their_own():
    iss = (ROOT / "packaging/windows/hemascan.iss").read_text()
    assert not re.search(r'#define\s+AppVersion\s+"', iss)  # given by build.ps1 from the bundle
    assert "#error" in iss.split("#ifndef AppVersion", 1)[1].split("#endif", 1)[0]
    metainfo = (ROOT / "packaging/linux/org.hemascan.hemascan.metainfo.xml").read_text()
    assert 'version="@VERSION@" date="@DATE@"' in metainfo
    make_deb = (ROOT / "packaging/linux/make_deb.sh").read_text()
    assert '"$BUNDLE/hemascan" --version' in make_deb and "pyproject" not in make_deb.split("VERSION=", 1)[1][:80]
    assert 'copy_metadata("hemascan")' in (ROOT / "packaging/hemascan.spec").read_text()
