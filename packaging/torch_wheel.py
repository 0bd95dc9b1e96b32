"""Fetch the torch wheel a build bundles, from a named source, checked against its pinned hash.

    python packaging/torch_wheel.py cpu|cuda WHEELHOUSE

Where it comes from (the first that is set):
  HEMASCAN_TORCH_WHEELS=DIR   a local folder of wheels (an offline build host, a lab's mirror copy)
  HEMASCAN_TORCH_INDEX=URL    a package index (an internal mirror of the one below)
  default                     cpu: PyTorch's own CPU wheel index, https://download.pytorch.org/whl/cpu
                              cuda: PyPI, https://pypi.org/simple (its torch wheels are the CUDA build)

The version is the pin in packaging/constraints-cpu.txt (cpu) or constraints.txt (cuda) and the
wheel must hash to packaging/torch-wheels.sha256 (pip's --require-hashes): a different file under
the same name stops the build. The wheel lands in WHEELHOUSE; build.sh installs it from there
(``--no-index --find-links``) before everything else. Exit 0 when fetched, 3 when the source
cannot be reached or does not hold the wheel, 2 for a usage error; one sentence on stderr.
Standard library only: it runs with the build host's Python before any venv exists.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONSTRAINTS = {"cpu": HERE / "constraints-cpu.txt", "cuda": ROOT / "constraints.txt"}
DEFAULT_INDEX = {"cpu": "https://download.pytorch.org/whl/cpu", "cuda": "https://pypi.org/simple"}
HASHES = HERE / "torch-wheels.sha256"
EXIT_USAGE, EXIT_UNREACHABLE = 2, 3


def pinned_version(variant: str) -> str:
    text = CONSTRAINTS[variant].read_text(encoding="utf-8")
    m = re.search(r"^torch==(\S+)\s*$", text, re.M)
    if not m:
        raise SystemExit(f"{CONSTRAINTS[variant]} pins no torch version (a line torch==X)")
    return m.group(1)


def pinned_hashes(version: str) -> list[str]:
    """sha256 digests accepted for torch==version (one line per wheel: "torch==V sha256:HEX file")."""
    out = []
    for line in HASHES.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and parts[0] == f"torch=={version}":
            out.append(parts[1])
    return out


def source() -> tuple[str, str]:
    """("folder", DIR) or ("index", URL), from the environment or the default."""
    folder = os.environ.get("HEMASCAN_TORCH_WHEELS", "").strip()
    if folder:
        return "folder", folder
    index = os.environ.get("HEMASCAN_TORCH_INDEX", "").strip()
    return "index", index


def reachable(url: str, timeout: float = 20.0) -> str | None:
    """None when the index answers for torch, else why not (a short phrase)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https", "file"):
        return f"{url!r} is not an http(s) or file URL"
    project = urllib.parse.urljoin(url.rstrip("/") + "/", "torch/")
    try:
        with urllib.request.urlopen(project, timeout=timeout) as r:  # noqa: S310 (scheme checked above)
            r.read(1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def fetch(variant: str, wheelhouse: Path) -> int:
    version = pinned_version(variant)
    hashes = pinned_hashes(version)
    if not hashes:
        print(f"torch_wheel: {HASHES.name} has no hash for torch=={version}: add the wheel's sha256 there",
              file=sys.stderr)
        return EXIT_USAGE
    kind, where = source()
    if kind == "folder":
        if not Path(where).is_dir():
            print(f"torch_wheel: the torch wheel folder {where} (HEMASCAN_TORCH_WHEELS) does not exist", file=sys.stderr)
            return EXIT_UNREACHABLE
        location = ["--isolated", "--no-index", "--find-links", where]
        named = f"the folder {where}"
    else:
        where = where or DEFAULT_INDEX[variant]
        why = reachable(where)
        if why:
            print(f"torch_wheel: cannot reach the torch wheel index {where} ({why}); set HEMASCAN_TORCH_INDEX to a "
                  "mirror or HEMASCAN_TORCH_WHEELS to a folder holding the wheel", file=sys.stderr)
            return EXIT_UNREACHABLE
        location = ["--isolated", "--index-url", where]
        named = f"the index {where}"
    # --isolated: only the named source; the build host's pip.conf and PIP_* (find-links,
    # extra indexes) are not looked at, so the build says truly where torch came from
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(f"torch=={version} " + " ".join(f"--hash={h}" for h in hashes) + "\n")
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                            "--only-binary", ":all:", "--dest", str(wheelhouse), *location, "-r", req.name],
                           capture_output=True, text=True)
    finally:
        os.unlink(req.name)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        print(f"torch_wheel: torch=={version} with its pinned hash could not be fetched from {named} ({last})",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"torch=={version} from {named} -> {wheelhouse}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in CONSTRAINTS:
        print("usage: python packaging/torch_wheel.py cpu|cuda WHEELHOUSE", file=sys.stderr)
        return EXIT_USAGE
    return fetch(argv[0], Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
