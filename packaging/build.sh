#!/usr/bin/env bash
# Build hemascan's Linux installer from a clean checkout:
#
#     packaging/build.sh [cpu|cuda]      # default cpu
#
# 1. a build venv in build/venv-VARIANT (created once; reinstalled when pyproject.toml or
#    the constraints change): cpu = the CPU torch wheel (packaging/constraints-cpu.txt),
#    cuda = the pinned CUDA torch (constraints.txt), plus PyInstaller;
# 2. PyInstaller one-folder bundle (packaging/hemascan.spec) in build/dist-VARIANT/hemascan;
# 3. the frozen app's --self-test (headless), which must pass;
# 4. dist/hemascan-VARIANT_VERSION_amd64.deb (packaging/linux/make_deb.sh).
#
# torch comes from a named source, checked against its pinned hash (packaging/torch_wheel.py):
# cpu = PyTorch's CPU wheel index, cuda = PyPI; HEMASCAN_TORCH_INDEX=URL (a mirror) or
# HEMASCAN_TORCH_WHEELS=DIR (a folder of wheels, offline) instead.
#
# Environment: PYTHON (default python3.11), DEB_COMPRESSION (zstd, default; xz for dpkg
# older than 1.21.18, e.g. Debian 11: much slower to build), DEB_COMPRESSION_LEVEL,
# SKIP_SELF_TEST=1 (not recommended).
set -euo pipefail

VARIANT="${1:-cpu}"
case "$VARIANT" in cpu|cuda) ;; *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
VENV="$ROOT/build/venv-$VARIANT"
DIST="$ROOT/build/dist-$VARIANT"
WORK="$ROOT/build/pyinstaller-$VARIANT"
if [ "$VARIANT" = cpu ]; then CONSTRAINTS="$ROOT/packaging/constraints-cpu.txt"; else CONSTRAINTS="$ROOT/constraints.txt"; fi

step() { printf '\n== %s\n' "$*"; }

step "build venv $VENV ($VARIANT)"
STAMP="$(cat pyproject.toml "$CONSTRAINTS" packaging/build.sh packaging/torch_wheel.py packaging/torch-wheels.sha256 \
         | sha256sum | cut -d' ' -f1)"
WHEELHOUSE="$ROOT/build/wheels-$VARIANT"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.hemascan-build-stamp" 2>/dev/null)" != "$STAMP" ]; then
    # hemascan is installed editable: its dependencies and its metadata (the version, the
    # licence list: core/distribution.py, core/distribution.py) come from it, while the modules the spec
    # bundles are the source tree itself, never a stale copy in site-packages.
    "$PYTHON" "$ROOT/packaging/torch_wheel.py" "$VARIANT" "$WHEELHOUSE"  # one sentence and exit 3 if unreachable
    TORCH_PIN="$(sed -n 's/^torch==\([^ ]*\) *$/\1/p' "$CONSTRAINTS")"
    "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps --no-index --find-links "$WHEELHOUSE" "torch==$TORCH_PIN"
    "$VENV/bin/pip" uninstall -q -y hemascan 2>/dev/null || true  # an older build venv's non-editable copy
    "$VENV/bin/pip" install --disable-pip-version-check -q -c "$CONSTRAINTS" -e "$ROOT" "pyinstaller>=6.10"
    echo "$STAMP" > "$VENV/.hemascan-build-stamp"
fi
"$VENV/bin/python" -c "import torch, PyInstaller; print('torch', torch.__version__, '| PyInstaller', PyInstaller.__version__)"

step "PyInstaller ($VARIANT) -> $DIST/hemascan"
rm -rf "$DIST"
HEMASCAN_VARIANT="$VARIANT" "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$ROOT/packaging/hemascan.spec"
# Debug symbols off the shared libraries (-35 MB of 1.26 GB, measured). Not the libraries
# auditwheel vendored into *.libs folders: strip corrupts them ("ELF load command address/offset
# not page-aligned": numpy's OpenBLAS would not load). The self-test below runs the stripped bundle.
if command -v strip >/dev/null; then
    find "$DIST/hemascan" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' -print0 \
        | xargs -0 -r -n 50 strip -S 2>/dev/null || true
fi
du -sh "$DIST/hemascan"

if [ "${SKIP_SELF_TEST:-0}" != 1 ]; then
    step "frozen self-test"
    # No display, no GPU, no user data touched (the self-test uses a temporary data dir).
    env -u DISPLAY QT_QPA_PLATFORM=offscreen "$DIST/hemascan/hemascan" --self-test
fi

step "Debian package"
"$ROOT/packaging/linux/make_deb.sh" "$DIST/hemascan" "$VARIANT" "$ROOT/dist"
