#!/usr/bin/env bash
# Make the .deb from a PyInstaller bundle (called by packaging/build.sh):
#
#     packaging/linux/make_deb.sh BUNDLE_DIR cpu|cuda OUT_DIR
#
# Layout: /opt/hemascan (the bundle), /usr/bin/hemascan (launcher),
# /usr/share/applications/hemascan.desktop, icons in /usr/share/icons/hicolor, AppStream
# metadata for the software centre. Everything is owned by the package, so removing it
# leaves nothing behind; user data (~/.local/share/hemascan) is never touched.
# Needs only dpkg-deb (no fakeroot: --root-owner-group).
set -euo pipefail

BUNDLE="$(cd "$1" && pwd)"
VARIANT="$2"
OUT="$3"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# The version the bundle itself reports (core/distribution.py: the package metadata; one line
# in pyproject.toml): the .deb, the AppStream file and the app can never disagree.
VERSION="$("$BUNDLE/hemascan" --version | sed -n 's/^hemascan //p')"
[ -n "$VERSION" ] || { echo "make_deb.sh: the bundle in $BUNDLE does not report its version (hemascan --version)" >&2; exit 1; }
# The release date: the last commit's (reproducible), else today.
RELEASE_DATE="$(git -C "$ROOT" log -1 --format=%cs 2>/dev/null || date -u +%F)"
ARCH="$(dpkg --print-architecture)"
# Who answers for this build: a lab or distributor that builds its own sets DEB_MAINTAINER.
MAINTAINER="${DEB_MAINTAINER:-hemascan maintainers <hemascan@localhost>}"
case "$MAINTAINER" in *@localhost*) echo "make_deb.sh: warning: Maintainer is $MAINTAINER (set DEB_MAINTAINER=\"Name <address>\" for a build you distribute)" >&2 ;; esac
PKG="hemascan-$VARIANT"
STAGE="$ROOT/build/deb-$VARIANT/${PKG}_${VERSION}_${ARCH}"

rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" \
         "$STAGE/usr/share/icons/hicolor/256x256/apps" "$STAGE/usr/share/icons/hicolor/scalable/apps" \
         "$STAGE/usr/share/metainfo" "$STAGE/usr/share/doc/$PKG"
cp -a "$BUNDLE" "$STAGE/opt/hemascan"
find "$STAGE/opt/hemascan" -name '__pycache__' -prune -exec rm -rf {} +
chmod -R u+rwX,go+rX,go-w "$STAGE/opt/hemascan"

cat > "$STAGE/usr/bin/hemascan" <<'EOF'
#!/bin/sh
# hemascan launcher (package hemascan-cpu / hemascan-cuda): the app lives in /opt/hemascan.
exec /opt/hemascan/hemascan "$@"
EOF
chmod 755 "$STAGE/usr/bin/hemascan"

install -m 644 "$HERE/hemascan.desktop" "$STAGE/usr/share/applications/hemascan.desktop"
install -m 644 "$ROOT/resources/icons/hemascan.png" "$STAGE/usr/share/icons/hicolor/256x256/apps/hemascan.png"
install -m 644 "$ROOT/resources/icons/hemascan.svg" "$STAGE/usr/share/icons/hicolor/scalable/apps/hemascan.svg"
sed -e "s/@VERSION@/$VERSION/" -e "s/@DATE@/$RELEASE_DATE/" "$HERE/org.hemascan.hemascan.metainfo.xml" \
    > "$STAGE/usr/share/metainfo/org.hemascan.hemascan.metainfo.xml"
chmod 644 "$STAGE/usr/share/metainfo/org.hemascan.hemascan.metainfo.xml"
# The licence texts the build collected (core/distribution.py: every bundled distribution).
[ -f "$BUNDLE/_internal/licences/index.json" ] || { echo "make_deb.sh: the bundle has no licences/index.json" >&2; exit 1; }
cp -a "$BUNDLE/_internal/licences" "$STAGE/usr/share/doc/$PKG/licences"
chmod -R u+rwX,go+rX,go-w "$STAGE/usr/share/doc/$PKG/licences"
cat > "$STAGE/usr/share/doc/$PKG/copyright" <<EOF
hemascan $VERSION ($VARIANT build). License: Apache-2.0.
It bundles Python and the libraries listed in licences/index.json, each under its own
licence; their texts are in /usr/share/doc/$PKG/licences/ (also shown in the app: Help >
Licences). Qt and Qt for Python (PySide6, shiboken6) are used under the GNU LGPL 3: they
are bundled unmodified as shared libraries in /opt/hemascan/_internal/PySide6, which a
user may replace with their own build of the same version; their source is available
from https://download.qt.io/official_releases/QtForPython/.
EOF

if [ "$VARIANT" = cuda ]; then
    DESC_EXTRA=" This build includes the NVIDIA CUDA libraries and uses an NVIDIA GPU when the driver is installed; otherwise it runs on the CPU."
else
    DESC_EXTRA=" This is the CPU-only build (smaller); it does not use NVIDIA GPUs."
fi
cat > "$STAGE/DEBIAN/control" <<EOF
Package: $PKG
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Section: science
Priority: optional
Installed-Size: $(du -sk "$STAGE" --exclude=DEBIAN | cut -f1)
Depends: libc6 (>= 2.28), libgl1, libegl1, libfontconfig1, libxkbcommon0, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-shape0, libxcb-image0, libxcb-render-util0, libxcb-randr0, libxcb-xfixes0, libxcb-sync1, libxcb-xkb1, libx11-xcb1, libdbus-1-3
Provides: hemascan
Conflicts: hemascan
Replaces: hemascan
Description: blood-smear image classification and review for hematology labs
 hemascan classifies folders of microscope blood-smear images with a CNN,
 stores every prediction and every correction in a local database and lets a
 pathologist review the results in a desktop app. It supports and does not
 replace diagnosis: it is not a diagnostic device.
 .
$(echo "$DESC_EXTRA" | fold -s -w 76 | sed 's/^/ /')
 .
 User data (database, models, logs) is kept in ~/.local/share/hemascan and is
 not removed when the package is removed.
EOF

# Refresh the menu and icon caches so the entry appears at once (both are optional tools).
cat > "$STAGE/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # the group of a data directory several users of this workstation share (README: one
    # workstation, several users); kept on removal, as Debian keeps system groups
    getent group hemascan >/dev/null 2>&1 || addgroup --system hemascan >/dev/null 2>&1 \
        || groupadd --system hemascan || true
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q /usr/share/applications || true
    command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t -f /usr/share/icons/hicolor || true
fi
exit 0
EOF
cat > "$STAGE/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
# Anything the app could have written next to itself (it runs with bytecode writing off,
# so normally nothing): remove it so the directory goes with the package.
if [ "$1" = remove ] || [ "$1" = purge ]; then
    rm -rf /opt/hemascan
    # dpkg removes /opt with our files when nothing else is in it; /opt is the system's folder
    # (FHS), not ours: it stays
    [ -d /opt ] || install -d -m 755 /opt
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q /usr/share/applications || true
    command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t -f /usr/share/icons/hicolor || true
fi
exit 0
EOF
chmod 755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/postrm"

mkdir -p "$OUT"
DEB="$OUT/${PKG}_${VERSION}_${ARCH}.deb"
# zstd: seconds instead of the ~30 min xz needs for a 1 GB bundle on 2 cores, ~15 % larger;
# dpkg reads it since 1.21.18 (Debian 12, Ubuntu 21.10). DEB_COMPRESSION=xz for older systems.
COMP="${DEB_COMPRESSION:-zstd}"
LEVEL="${DEB_COMPRESSION_LEVEL:-}"
dpkg-deb --root-owner-group -Z"$COMP" ${LEVEL:+-z"$LEVEL"} --build "$STAGE" "$DEB"
rm -rf "$STAGE"  # the staging copy (the size of the bundle) is not kept per version
ls -l "$DEB"
echo "install: sudo apt install $DEB   (or double-click it in the file manager)"
