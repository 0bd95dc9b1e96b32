"""Issue 24 item 8: a second window on the same data directory says so and does not open."""
from __future__ import annotations

import subprocess
import sys
import time

from core.config import resolve_paths
from core.errors import EXIT_BUSY
from tests.conftest import ROOT

HOLDER = ("import sys, time; sys.path.insert(0, sys.argv[2]); from desktop.instance import claim_window; "
          "lock = claim_window(sys.argv[1]); print('held', flush=True); time.sleep(60)")


def test_a_second_window_on_the_same_data_directory_is_refused_with_a_sentence(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from desktop import app as desktop_app
    from desktop import mainwindow

    data = tmp_path / "data"
    data.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said: list[str] = []
        monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a: said.append(text))

        def no_window(*a, **k):
            raise AssertionError("a second window was opened")

        monkeypatch.setattr(mainwindow, "MainWindow", no_window)
        rc = desktop_app.run_gui(resolve_paths(data))
        assert rc == EXIT_BUSY
        assert said and "already open on the data directory" in said[0] and f"process {holder.pid}" in said[0]
    finally:
        holder.kill()
        holder.wait()
    # the first one gone (even killed), the directory is free again
    from desktop.instance import claim_window

    deadline = time.monotonic() + 10
    while True:
        try:
            claim_window(data).release()
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.1)
