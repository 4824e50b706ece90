#!/usr/bin/env bash
# `make uninstall`: remove the program and the unit; keep config and data
# (/etc/homehub and /var/lib/homehub hold the installer's work and unsent readings).
# ROOT=/some/dir works on that directory tree instead of /, like install.sh.
set -euo pipefail
ROOT="${ROOT:-}"
PREFIX="${PREFIX:-/opt/homehub}"
if [ "$(id -u)" -ne 0 ]; then
    echo "uninstall: run as root (sudo make uninstall)" >&2
    exit 1
fi
if [ -n "$ROOT" ]; then
    systemctl --root "$ROOT" disable homehub.service 2>/dev/null || true
else
    systemctl disable --now homehub.service 2>/dev/null || true
fi
rm -f "$ROOT/etc/systemd/system/homehub.service" "$ROOT/usr/local/bin/homehub"
rm -f "$ROOT/etc/sysusers.d/homehub.conf" "$ROOT/etc/tmpfiles.d/homehub.conf"
rm -rf "$ROOT$PREFIX"
[ -z "$ROOT" ] && systemctl daemon-reload
echo "uninstall: removed $PREFIX and the unit; kept /etc/homehub and /var/lib/homehub"
