#!/usr/bin/env bash
# Install a built .deb into a fresh Debian root and use it as two users of one workstation
# sharing a data directory through the system-wide configuration (issue 25), then purge it:
#
#     sudo packaging/linux/check_shared_install.sh ROOT DEB
#
# ROOT: a fresh root made with `debootstrap --variant=minbase bookworm ROOT` (its apt reaches
# Debian's packages). Prints each step and exits non-zero at the first that fails. Checks:
# the package installs with its dependencies; `hemascan --version`; the hemascan group exists;
# alice and bob (both in that group) classify and label in /srv/hemascan, each as themselves;
# every file there stays group-writable; purge removes the package and leaves /opt and the
# shared data alone.
set -euo pipefail
ROOT="$(cd "$1" && pwd)"
DEB="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
step() { printf '\n== %s\n' "$*"; }
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
as_user() { local who="$1"; shift; chroot "$ROOT" /usr/sbin/runuser -u "$who" -- /usr/bin/env -i PATH=/usr/bin:/bin \
    HOME="/home/$who" LANG=C.UTF-8 QT_QPA_PLATFORM=offscreen "$@"; }

mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
trap 'umount "$ROOT/dev/pts" "$ROOT/dev" "$ROOT/proc" 2>/dev/null || true' EXIT
[ ! -e "$ROOT/srv/hemascan" ] || { echo "$ROOT/srv/hemascan exists: use a fresh root" >&2; exit 1; }

step "install $(basename "$DEB")"
[ -d "$ROOT/opt" ] || { echo "the root has no /opt to begin with" >&2; exit 1; }
cp "$DEB" "$ROOT/tmp/"
in_root apt-get update -qq
start=$(date +%s)
in_root apt-get install -y -qq "/tmp/$(basename "$DEB")" > "$ROOT/tmp/apt.log" 2>&1 || { tail -20 "$ROOT/tmp/apt.log"; exit 1; }
echo "installed in $(( $(date +%s) - start )) s; $(grep -c '^Setting up' "$ROOT/tmp/apt.log") packages set up"
in_root hemascan --version
in_root getent group hemascan

step "two users, one shared data directory (/etc/hemascan/hemascan.toml)"
for who in alice bob; do in_root id "$who" >/dev/null 2>&1 || in_root useradd -m -G hemascan "$who"; done
in_root install -d -m 2775 -g hemascan /srv/hemascan
in_root install -d -m 755 /etc/hemascan
printf 'data_dir = "/srv/hemascan"\n' > "$ROOT/etc/hemascan/hemascan.toml"
as_user alice hemascan -q sample /home/alice/smears --per-class 2
as_user alice hemascan -q classify /home/alice/smears
as_user alice chmod -R a+rX /home/alice  # bob reads alice's sample folder (his own images would do the same)
as_user bob hemascan -q sample /home/bob/labelled --per-class 2 --seed 7  # other images than alice's
as_user bob hemascan -q import-labels /home/bob/labelled
as_user bob hemascan -q classify /home/bob/labelled
as_user alice hemascan -q export --output /home/alice/all.csv
labels=$(grep -c '^/home/bob/.*,bob,' "$ROOT/home/alice/all.csv" || true)
[ "$labels" -eq 8 ] || { echo "alice's export shows $labels labels by bob, not his 8" >&2; exit 1; }
echo "alice's export of the shared database: $(($(wc -l < "$ROOT/home/alice/all.csv") - 1)) rows, $labels labelled by bob"
private=$(find "$ROOT/srv/hemascan" -type f ! -perm -g+w ! -path '*/models/*' | sed "s|^$ROOT||")
[ -z "$private" ] || { echo "not group-writable: $private" >&2; exit 1; }
echo "every file in /srv/hemascan is group-writable ($(find "$ROOT/srv/hemascan" -type f | wc -l) files)"

step "purge"
in_root apt-get purge -y -qq hemascan-cpu > /dev/null
[ -d "$ROOT/opt" ] && [ ! -e "$ROOT/opt/hemascan" ] || { echo "purge: /opt is gone or /opt/hemascan is left" >&2; exit 1; }
[ -f "$ROOT/srv/hemascan/hemascan.sqlite3" ] || { echo "purge removed the shared data" >&2; exit 1; }
echo "purged: /opt kept, /opt/hemascan gone, the shared data kept"
