"""The log file rotates by size and keeps libraries' INFO chatter out (issue 25)."""
from __future__ import annotations

import logging

import pytest

from core.app import cli


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    before = list(root.handlers)
    yield root
    for h in root.handlers[:]:
        if h not in before:
            root.removeHandler(h)
            h.close()
    for name in cli.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_log_rotates_and_keeps_a_few_files(paths, clean_root, monkeypatch):
    monkeypatch.setattr(cli, "LOG_MAX_BYTES", 2000)
    log_file = cli.setup_logging(paths, verbose=False)
    for k in range(400):
        logging.getLogger("core.test").info("line %d of a long-running workstation %s", k, "x" * 40)
    files = sorted(p.name for p in paths.logs.iterdir())
    assert files == ["hemascan.log", "hemascan.log.1", "hemascan.log.2", "hemascan.log.3"]
    assert all(p.stat().st_size <= 2000 + 200 for p in paths.logs.iterdir())
    assert "line 399 " in open(log_file, encoding="utf-8").read()


def test_libraries_info_lines_stay_out_unless_verbose(paths, clean_root):
    log_file = cli.setup_logging(paths, verbose=False)
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0006 -> 0007")
    logging.getLogger("alembic.runtime.migration").warning("a migration warning")
    logging.getLogger("core.app").info("hemascan's own line")
    text = open(log_file, encoding="utf-8").read()
    assert "Running upgrade" not in text and "a migration warning" in text and "hemascan's own line" in text
