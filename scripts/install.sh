#!/usr/bin/env bash
# `make install`: install homehub as a system service on Raspberry Pi OS Bookworm
# or Debian 12. Run as root. Idempotent; never overwrites /etc/homehub/homehub.toml.
#
# ROOT=/some/dir installs into that directory tree instead of / (systemd's
# --root tools work offline); the tests use it, and so can an image builder.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT="${ROOT:-}"
PREFIX="${PREFIX:-/opt/homehub}"
PYTHON="${PYTHON:-python3}"
CONFIG=/etc/homehub/homehub.toml

if [ "$(id -u)" -ne 0 ]; then
    echo "install: run as root (sudo make install)" >&2
    exit 1
fi

if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv
fi

echo "install: virtualenv in $ROOT$PREFIX/venv"
"$PYTHON" -m venv "$ROOT$PREFIX/venv"
# cryptography (the hub's key, certificates and signatures) needs cffi >= 2, of which PyPI
# has no armv7l wheel (32-bit Raspberry Pi OS; its piwheels index has one): without a wheel
# pip builds cffi from source, which needs a C compiler and the headers. Install those only
# then, so a 64-bit Pi (wheels for everything) stays without a compiler.
probe="$(mktemp -d)"
if ! "$ROOT$PREFIX/venv/bin/python" -m pip download -q --only-binary=:all: --no-deps \
        -d "$probe" "cffi>=2" >/dev/null 2>&1; then
    echo "install: no cffi wheel for this machine; installing gcc, libffi-dev, python3-dev to build it"
    apt-get update -qq && apt-get install -y -qq gcc libffi-dev python3-dev
fi
rm -rf "$probe"
# homehub-contract (contract/, the schemas shared with the backend) is not on PyPI: name it
# in the same command so pip resolves homehub's dependency on it from here.
"$ROOT$PREFIX/venv/bin/python" -m pip install -q ./contract .

install -D -m 0644 systemd/homehub.sysusers "$ROOT/etc/sysusers.d/homehub.conf"
install -D -m 0644 systemd/homehub.tmpfiles "$ROOT/etc/tmpfiles.d/homehub.conf"
install -D -m 0644 systemd/homehub.service "$ROOT/etc/systemd/system/homehub.service"
install -D -m 0644 docs/INSTALL.md "$ROOT$PREFIX/share/INSTALL.md"
install -D -m 0644 config/example.toml "$ROOT$PREFIX/share/example.toml"

root_args=()
[ -n "$ROOT" ] && root_args=(--root "$ROOT")
systemd-sysusers "${root_args[@]}" "$ROOT/etc/sysusers.d/homehub.conf"
systemd-tmpfiles "${root_args[@]}" --create "$ROOT/etc/tmpfiles.d/homehub.conf"

if [ ! -e "$ROOT$CONFIG" ]; then
    install -D -m 0640 config/example.toml "$ROOT$CONFIG"
    echo "install: wrote $CONFIG from the example: edit it, then 'homehub check-config'"
else
    echo "install: kept the existing $CONFIG"
fi
mkdir -p "$ROOT/usr/local/bin"
ln -sf "$PREFIX/venv/bin/homehub" "$ROOT/usr/local/bin/homehub"

# The group exists only after systemd-sysusers: the config is readable by the
# service (group homehub), not by everyone.
gid="$(awk -F: '$1 == "homehub" { print $3 }' "$ROOT/etc/group")"
chgrp "$gid" "$ROOT$CONFIG"

if [ -n "$ROOT" ]; then
    systemctl --root "$ROOT" enable homehub.service
elif [ ! -d /run/systemd/system ]; then
    # systemd is not running here (sd_booted(3)'s test): a chroot, e.g. an image build or
    # scripts/pi-root-check.sh. Enable the unit offline for the next boot; there is no
    # manager to reload or to start it.
    systemctl --root / enable homehub.service
    echo "install: systemd is not running here: homehub.service is enabled for the next boot"
    echo "install: done. Edit $CONFIG; it starts at boot (or run: homehub run --config $CONFIG)"
    exit 0
else
    systemctl daemon-reload
    systemctl enable homehub.service
fi
echo "install: done. Edit $CONFIG, then: sudo systemctl start homehub"
