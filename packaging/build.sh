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
STAMP="$(cat pyproject.toml "$CONSTRAINTS" packaging/build.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.hemascan-build-stamp" 2>/dev/null)" != "$STAMP" ]; then
    # hemascan itself is installed only to pull in its dependencies, then removed: the spec
    # bundles the source tree, never a stale copy from site-packages.
    "$VENV/bin/pip" install --disable-pip-version-check -q -c "$CONSTRAINTS" "$ROOT" "pyinstaller>=6.10"
    "$VENV/bin/pip" uninstall -q -y hemascan
    echo "$STAMP" > "$VENV/.hemascan-build-stamp"
fi
"$VENV/bin/python" -c "import torch, PyInstaller; print('torch', torch.__version__, '| PyInstaller', PyInstaller.__version__)"

step "PyInstaller ($VARIANT) -> $DIST/hemascan"
rm -rf "$DIST"
HEMASCAN_VARIANT="$VARIANT" "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$ROOT/packaging/hemascan.spec"
du -sh "$DIST/hemascan"

if [ "${SKIP_SELF_TEST:-0}" != 1 ]; then
    step "frozen self-test"
    # No display, no GPU, no user data touched (the self-test uses a temporary data dir).
    env -u DISPLAY QT_QPA_PLATFORM=offscreen "$DIST/hemascan/hemascan" --self-test
fi

step "Debian package"
"$ROOT/packaging/linux/make_deb.sh" "$DIST/hemascan" "$VARIANT" "$ROOT/dist"
