#!/usr/bin/env python3
"""Set up hemascan in ./.venv and run it: the README's two commands.

    python3 dev.py demo   # install, then classify a synthetic sample folder with the bundled model
    python3 dev.py test   # install (with test tools), then ruff, import-linter and the whole test suite

Only the Python standard library is used here, so this works on a fresh machine with
nothing but Python 3.11 and the package registries. The install is skipped when
pyproject.toml and constraints.txt have not changed since the last one.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def _stamp() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_env(extras: str = "dev") -> None:
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp_file = VENV / f".hemascan-installed-{extras}"
    if stamp_file.exists() and stamp_file.read_text() == _stamp():
        return
    print("installing hemascan and its dependencies (first run takes a few minutes)", flush=True)
    cmd = [str(PY), "-m", "pip", "install", "--disable-pip-version-check",
           "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[{extras}]"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    stamp_file.write_text(_stamp())


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    ensure_env()
    if what == "setup":
        return 0
    if what == "demo":
        return subprocess.call([str(BIN / "hemascan"), "demo", *rest], cwd=ROOT)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    for lint in ([str(BIN / "ruff"), "check", "."], [str(BIN / "lint-imports")]):
        rc = subprocess.call(lint, cwd=ROOT, env=env)
        if rc != 0:
            return rc
    # --durations: the slowest tests are printed on every run, so slow ones are seen
    return subprocess.call([str(PY), "-m", "pytest", "--durations=15", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
