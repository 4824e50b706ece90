#!/usr/bin/env bash
# Install what homehub needs on a fresh Debian/Raspberry Pi OS machine, idempotently:
# Debian's mosquitto (the demo's and the tests' broker), postgresql (homehub-backend's
# tests and demo run a private cluster), dbus and python3-dbusmock (the
# BlueZ tests' private bus and bluetoothd stand-in) and a virtualenv in .venv
# with homehub and its test/dev extras. Safe to run again; does nothing when done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "bootstrap: need root for: $*" >&2; return 1; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    echo "bootstrap: installing Debian's mosquitto" >&2
    apt_install mosquitto
fi

if ! command -v openssl >/dev/null; then
    echo "bootstrap: installing openssl (the TLS tests make their own certificates)" >&2
    apt_install openssl
fi

if ! command -v systemd-analyze >/dev/null; then
    echo "bootstrap: installing systemd (the tests verify the unit with systemd-analyze)" >&2
    apt_install systemd
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    echo "bootstrap: installing postgresql (homehub-backend's tests run a private cluster)" >&2
    apt_install postgresql
fi

if ! command -v dbus-daemon >/dev/null; then
    echo "bootstrap: installing dbus (the BlueZ tests run a private bus)" >&2
    apt_install dbus
fi

if ! /usr/bin/python3 -c 'import dbusmock, dbus, gi' 2>/dev/null; then
    echo "bootstrap: installing python3-dbusmock (the BlueZ tests' bluetoothd stand-in)" >&2
    apt_install python3-dbusmock
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: $PYTHON is older than 3.11; set PYTHON=python3.11" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        echo "bootstrap: installing python3-venv" >&2
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi

stamp="$VENV/.homehub-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ contract/pyproject.toml -nt "$stamp" ] \
    || [ backend/pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing homehub into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # homehub-contract (contract/) is not on PyPI: name it in the same command. The backend
    # (backend/, homehub-backend) goes into the same venv for its tests and the demo.
    "$VENV/bin/python" -m pip install -q -e ./contract -e '.[dev]' -e ./backend
    touch "$stamp"
fi
