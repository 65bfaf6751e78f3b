#!/bin/sh
# Install or upgrade the Wi-SUN gateway agent on a Debian 12 (systemd) gateway, as root.
#
#   scripts/install.sh                      from this source tree, deps from the package index
#   scripts/install.sh --wheel FILE.whl     from a built wheel
#   scripts/install.sh --pip-args "--no-index --find-links /media/usb/wheels"   offline gateway
#   scripts/install.sh --enable             also enable and start the service (config checked)
#   scripts/install.sh --destdir DIR        stage into DIR (packaging, tests): no system changes
#
# What goes where (docs/install.md):
#   /opt/firmware-agent/venvs/TIME-VERSION/   one virtualenv per install, with the gateway extras
#   /opt/firmware-agent/venv -> venvs/...     the one the unit runs; swapped atomically, so an
#                                             upgrade never leaves a half-installed agent
#   /usr/local/lib/systemd/system/firmware-agent.service
#   /usr/local/lib/sysusers.d/firmware-agent.conf, /usr/local/lib/tmpfiles.d/firmware-agent.conf
#   /etc/udev/rules.d/60-wisun-radio.rules
#   /etc/firmware-agent/gateway.yaml          the example, only when there is none (never replaced)
#   /usr/local/share/doc/firmware-agent/      the docs
# Exit codes: 0 done, 1 a step failed (the message says which), 2 bad usage.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=""
PREFIX=/opt/firmware-agent
WHEEL=""
PIP_ARGS=""
PYTHON=${PYTHON:-python3}
WITH_VENV=1
ENABLE=0
KEEP_VENVS=3

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) DESTDIR=${2:?}; shift 2 ;;
    --prefix) PREFIX=${2:?}; shift 2 ;;
    --wheel) WHEEL=${2:?}; shift 2 ;;
    --pip-args) PIP_ARGS=${2?}; shift 2 ;;
    --python) PYTHON=${2:?}; shift 2 ;;
    --no-venv) WITH_VENV=0; shift ;;
    --enable) ENABLE=1; shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option $1" >&2; usage ;;
  esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, not $PREFIX" ;; esac
if [ -n "$DESTDIR" ]; then
  mkdir -p "$DESTDIR"
  DESTDIR=$(cd "$DESTDIR" && pwd)
  [ "$ENABLE" = 0 ] || die "--enable changes the running system: not with --destdir"
elif [ "$(id -u)" != 0 ]; then
  die "run as root (or stage with --destdir DIR)"
fi
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "no wheel at $WHEEL"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$PYTHON is missing or older than 3.11"

# install FILE MODE TARGET: copy with a mode, creating the directory
put() { install -D -m "$2" "$1" "$DESTDIR$3"; }

if [ "$WITH_VENV" = 1 ]; then
  if [ -n "$WHEEL" ]; then
    version=$(basename "$WHEEL" | cut -d- -f2)
    what="$WHEEL"
  else
    version=$(sed -n 's/^version *= *//p' "$SRC/setup.cfg")
    what="$SRC"
  fi
  [ -n "$version" ] || die "cannot tell the version to install"
  venvs="$DESTDIR$PREFIX/venvs"
  new="$(date -u +%Y%m%dT%H%M%SZ)-$version"  # time first: names sort by age
  mkdir -p "$venvs"
  say "creating $PREFIX/venvs/$new"
  "$PYTHON" -m venv "$venvs/$new" || die "python3 -m venv failed (Debian: apt install python3-venv)"
  # shellcheck disable=SC2086  # PIP_ARGS is a list of options on purpose
  if ! "$venvs/$new/bin/python" -m pip install -q --disable-pip-version-check $PIP_ARGS \
      "$what[gateway]"; then
    rm -rf "$venvs/$new"
    die "pip could not install $what (offline? use --pip-args \"--no-index --find-links DIR\")"
  fi
  "$venvs/$new/bin/firmware-agent" --version >/dev/null || { rm -rf "$venvs/$new"; die "the new agent does not run"; }
  # swap the link atomically: a rename over the old one
  ln -sfn "venvs/$new" "$DESTDIR$PREFIX/venv.tmp"
  mv -T "$DESTDIR$PREFIX/venv.tmp" "$DESTDIR$PREFIX/venv"
  say "$PREFIX/venv -> venvs/$new"
  # keep the newest few for a rollback (docs/operator.md: "Upgrade and roll back")
  ls -1 "$venvs" | sort -r | tail -n +$((KEEP_VENVS + 1)) | while read -r old; do
    rm -rf "${venvs:?}/$old"
  done
fi

put "$SRC/systemd/firmware-agent.service" 0644 /usr/local/lib/systemd/system/firmware-agent.service
put "$SRC/systemd/sysusers.d/firmware-agent.conf" 0644 /usr/local/lib/sysusers.d/firmware-agent.conf
put "$SRC/systemd/tmpfiles.d/firmware-agent.conf" 0644 /usr/local/lib/tmpfiles.d/firmware-agent.conf
put "$SRC/systemd/60-wisun-radio.rules" 0644 /etc/udev/rules.d/60-wisun-radio.rules
for doc in "$SRC"/docs/*.md; do
  put "$doc" 0644 "/usr/local/share/doc/firmware-agent/$(basename "$doc")"
done
config="$DESTDIR/etc/firmware-agent/gateway.yaml"
if [ -e "$config" ]; then
  say "keeping /etc/firmware-agent/gateway.yaml"
else
  put "$SRC/config/gateway.example.yaml" 0640 /etc/firmware-agent/gateway.yaml
  say "installed the example as /etc/firmware-agent/gateway.yaml: edit it before starting"
fi

if [ -n "$DESTDIR" ]; then
  say "staged into $DESTDIR (run systemd-sysusers and systemd-tmpfiles --create on the target)"
  exit 0
fi

systemd-sysusers /usr/local/lib/sysusers.d/firmware-agent.conf || die "systemd-sysusers failed"
systemd-tmpfiles --create /usr/local/lib/tmpfiles.d/firmware-agent.conf || die "systemd-tmpfiles failed"
chgrp firmware-agent /etc/firmware-agent/gateway.yaml
if command -v udevadm >/dev/null; then
  udevadm control --reload && udevadm trigger --action=add --subsystem-match=tty --subsystem-match=spidev || true
fi
systemctl daemon-reload
if systemctl is-active --quiet firmware-agent.service; then
  say "restarting the running agent on the new version"
  systemctl restart firmware-agent.service || die "restart failed: journalctl -u firmware-agent -e"
elif [ "$ENABLE" = 1 ]; then
  runuser -u firmware-agent -- "$PREFIX/venv/bin/firmware-agent" check-config /etc/firmware-agent/gateway.yaml \
    || die "fix /etc/firmware-agent/gateway.yaml, then: systemctl enable --now firmware-agent"
  systemctl enable --now firmware-agent.service
  say "started: systemctl status firmware-agent"
else
  say "next: edit /etc/firmware-agent/gateway.yaml, put keys in /etc/firmware-agent/pki, then"
  say "      systemctl enable --now firmware-agent   (docs/operator.md)"
fi
