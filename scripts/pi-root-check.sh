#!/usr/bin/env bash
# scripts/pi-root-check.sh ARCH — prove that homehub installs and runs on a Raspberry Pi
# OS-like root of ARCH (arm64 = 64-bit, armhf = 32-bit), emulated with qemu-user (issue 11).
# `make pi-check` runs both. Not part of `make test`: pip under qemu takes minutes.
#
# What it does, each step timed:
#   1. host:     installs mmdebstrap, qemu-user-static, binfmt-support if missing; mounts
#                binfmt_misc and registers qemu for ARCH;
#   2. cache:    builds, ONCE, a Debian bookworm root for ARCH with mmdebstrap into
#                $PI_ROOT_CACHE/bookworm-ARCH-KEY.tar (KEY: a hash of what goes in it);
#   3. unpack:   a fresh copy of that root for this run; bind-mounts /proc, /sys, /dev;
#   4. install:  copies the repo (git archive of HEAD, or the work tree with --tree) to
#                /usr/local/src/homehub in the root and runs `make install` there, as root;
#   5. broker:   Debian's mosquitto inside the root, on 127.0.0.1 and a free port;
#   6. check:    writes /etc/homehub/homehub.toml (simulated devices, that broker) and runs
#                `homehub check-config` as the installed user `homehub`;
#   7. run:      `homehub listen` (the reference backend, validating every payload) in the
#                background, then `homehub run` as user homehub for RUN seconds (60),
#                `homehub status` while it runs, SIGTERM, and its exit status (0 expected);
#   8. verify:   every reading the store marks delivered reached the listener, valid;
# then prints a summary (arch, Python, versions and wheel tags of the compiled
# dependencies, time of each step, PASS/FAIL) and exits 0 only on PASS. Everything it
# started and mounted is stopped and unmounted on exit, whatever happens (trap).
#
# How this root differs from a real Raspberry Pi OS Lite (docs/INSTALL.md, "Emulated Pi
# root"): it is plain Debian bookworm (Raspberry Pi OS is bookworm plus the Raspberry Pi
# archive: its kernel, firmware, raspi-config, and an /etc/pip.conf that adds the piwheels
# index, unreachable from here; PI_ROOT_PIP_EXTRA_INDEX_URL reproduces that file); the
# kernel is the host's (uname -r), seen through qemu-user, which reports aarch64 / armv7l;
# there is no systemd running (chroot: the hub is started directly, as the unit would, as
# user homehub), no GPIO chip, no Bluetooth adapter; and it runs much slower than a Pi.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/pi-root-check.sh [--tree] [--keep] [--cache DIR] ARCH

Builds (once, cached) a Debian bookworm root for ARCH, installs homehub in it with
`make install` under qemu, runs it against a mosquitto inside the root with simulated
devices, and checks the readings reached the broker. Run as root.

  ARCH           arm64 (64-bit Raspberry Pi OS) or armhf (32-bit Raspberry Pi OS)
  --cache DIR    where the root is cached and runs are unpacked
                 (default: $PI_ROOT_CACHE, else /var/cache/homehub-piroot)
  --tree         copy the work tree (tracked and untracked, not ignored files) instead
                 of `git archive HEAD`
  --keep         keep this run's unpacked root (unmounted) for a look afterwards
  -h, --help     this help

Environment: PI_ROOT_CACHE (as --cache), PI_CHECK_RUN_S (seconds of `homehub run`,
default 60), PI_ROOT_PIP_EXTRA_INDEX_URL (written to the root's /etc/pip.conf as
extra-index-url, as Raspberry Pi OS does for piwheels; default: none, PyPI only).
Exit status: 0 PASS, 1 FAIL, 2 usage error.
EOF
}

CACHE="${PI_ROOT_CACHE:-/var/cache/homehub-piroot}"
RUN_S="${PI_CHECK_RUN_S:-60}"
EXTRA_INDEX="${PI_ROOT_PIP_EXTRA_INDEX_URL:-}"
SOURCE="head"
KEEP=0
ARCH=""

while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --tree) SOURCE=tree ;;
    --keep) KEEP=1 ;;
    --cache)
        [ $# -ge 2 ] || { echo "pi-root-check: --cache needs a directory" >&2; exit 2; }
        CACHE="$2"
        shift
        ;;
    -*)
        echo "pi-root-check: unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *)
        [ -z "$ARCH" ] || { echo "pi-root-check: one ARCH only (see --help)" >&2; exit 2; }
        ARCH="$1"
        ;;
    esac
    shift
done

case "$ARCH" in
arm64) QEMU_ARCH=aarch64 ;;
armhf) QEMU_ARCH=arm ;;
"")
    echo "pi-root-check: ARCH missing: arm64 or armhf (see --help)" >&2
    exit 2
    ;;
*)
    echo "pi-root-check: ARCH must be arm64 or armhf, not '$ARCH'" >&2
    exit 2
    ;;
esac
case "$RUN_S" in
'' | *[!0-9]*)
    echo "pi-root-check: PI_CHECK_RUN_S must be a whole number of seconds, not '$RUN_S'" >&2
    exit 2
    ;;
esac
if [ "$RUN_S" -lt 20 ]; then
    echo "pi-root-check: PI_CHECK_RUN_S must be at least 20 (the hub starts slowly under qemu)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "pi-root-check: run as root (it mounts, chroots and may apt-get install)" >&2
    exit 2
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)" # absolute: compared with /proc/PID/root and mountinfo
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
# In the cached root: what Raspberry Pi OS Lite has and the check needs (python3, make,
# systemd's sysusers/tmpfiles/systemctl for install.sh, CA certificates) and the test
# broker. python3-venv is left out on purpose: install.sh installs it when missing.
INCLUDE=python3,ca-certificates,make,systemd,mosquitto,mosquitto-clients
KEY="$(printf '%s\n' "$SUITE" "$MIRROR" "$SECURITY" "$INCLUDE" | sha256sum | cut -c1-10)"
TARBALL="$CACHE/$SUITE-$ARCH-$KEY.tar"
LOG="$CACHE/pi-check-$ARCH.log"
ROOT=""
GATEWAY_ID="pi-check-$ARCH"
CONFIG=/etc/homehub/homehub.toml
HOMEHUB=/opt/homehub/venv/bin/homehub
IN_ROOT_ENV=(
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DEFAULT_TIMEOUT=180
    PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=
)

: >"$LOG"

# -- steps, times, summary -------------------------------------------------------------

STEPS=()
CURRENT=""
CURRENT_START=""
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME FUNCTION: runs FUNCTION with its output in $LOG and records its time. A
# failing command in it ends the script (set -e; deliberately not called under || or &&,
# where bash would ignore -e inside the function): the EXIT trap reports that step.
step() {
    CURRENT="$1"
    shift
    CURRENT_START="$(now)"
    echo "== $CURRENT" >>"$LOG"
    printf 'pi-root-check %s: %-8s ... ' "$ARCH" "$CURRENT"
    "$@" >>"$LOG" 2>&1
    local took
    took="$(elapsed "$CURRENT_START")"
    STEPS+=("$(printf '%-8s %7s s  ok' "$CURRENT" "$took")")
    echo "ok ($took s)"
    CURRENT=""
}

in_root() { chroot "$ROOT" "${IN_ROOT_ENV[@]}" "$@"; }
# As the installed service user, as the unit runs it (User=homehub, its groups).
AS_HUB=(setpriv --reuid=homehub --regid=homehub --init-groups --)
as_hub() { in_root "${AS_HUB[@]}" "$@"; }

# -- cleanup: everything started or mounted here, on any exit ----------------------------

procs_in_root() {
    local p link
    [ -n "$ROOT" ] || return 0
    for p in /proc/[0-9]*; do
        link="$(readlink "$p/root" 2>/dev/null)" || continue
        [ "$link" = "$ROOT" ] && echo "${p#/proc/}"
    done
    return 0
}

mounts_under_root() {
    [ -n "$ROOT" ] || return 0
    awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

cleanup() {
    local pids m
    if [ -n "$ROOT" ] && [ -d "$ROOT" ]; then
        # Processes whose root is this run's root only (the hub, the listener, mosquitto).
        pids="$(procs_in_root)"
        if [ -n "$pids" ]; then
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
            for _ in $(seq 50); do
                [ -z "$(procs_in_root)" ] && break
                sleep 0.1
            done
            pids="$(procs_in_root)"
            # shellcheck disable=SC2086
            [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        fi
        for m in $(mounts_under_root); do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
        if [ -n "$(mounts_under_root)" ]; then
            # Never rm -rf through a bind mount of the host's /dev.
            echo "pi-root-check: still mounted under $ROOT; not removing it" >&2
            return 1
        elif [ "$KEEP" -eq 1 ]; then
            echo "pi-root-check: kept the root at $ROOT (unmounted)" >&2
        else
            rm -rf --one-file-system "$ROOT"
        fi
    fi
    return 0
}

# On every exit: the summary (PASS only when every step ran), then the cleanup.
finish() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$CURRENT" ]; then
        local took
        took="$(elapsed "$CURRENT_START")"
        STEPS+=("$(printf '%-8s %7s s  FAILED (exit %s)' "$CURRENT" "$took" "$rc")")
        echo "FAILED after $took s (exit $rc); the end of $LOG:"
        tail -n 30 "$LOG" | sed 's/^/    /'
        [ "$rc" -ne 0 ] || rc=1
        # The versions help most when the install or the run failed.
        if [ "$CURRENT" != versions ] && [ -n "$ROOT" ] && [ -x "$ROOT/opt/homehub/venv/bin/python" ]; then
            versions >>"$LOG" 2>&1
        fi
    fi
    echo
    echo "== pi-root-check $ARCH: Debian $SUITE root, qemu-$QEMU_ARCH, source $SOURCE"
    [ -z "$VERSIONS" ] || echo "$VERSIONS"
    [ -z "$DELIVERED" ] || echo "readings delivered $DELIVERED, received by the listener $RECEIVED (homehub run: $RUN_S s)"
    [ -z "$HUB_RC" ] || echo "hub exit status after SIGTERM: $HUB_RC"
    [ ${#STEPS[@]} -eq 0 ] || printf '%s\n' "${STEPS[@]}"
    [ -z "$START" ] || printf 'total    %7s s\n' "$(elapsed "$START")"
    cleanup || { [ "$rc" -ne 0 ] || rc=1; }
    if [ "$rc" -eq 0 ]; then
        echo "PASS $ARCH"
    else
        echo "FAIL $ARCH${CURRENT:+ (at $CURRENT)}; full log: $LOG"
    fi
    exit "$rc"
}
START=""
VERSIONS=""
DELIVERED=""
RECEIVED=""
HUB_RC=""
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- the steps ---------------------------------------------------------------------------

host_setup() {
    local need=()
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    [ -e "/usr/bin/qemu-$QEMU_ARCH-static" ] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    update-binfmts --enable "qemu-$QEMU_ARCH"
    # The F flag: the kernel holds the interpreter open, so it works inside the chroot
    # without copying qemu there.
    grep -q '^enabled' "/proc/sys/fs/binfmt_misc/qemu-$QEMU_ARCH"
    grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/qemu-$QEMU_ARCH"
}

build_cache() {
    if [ -s "$TARBALL" ]; then
        echo "cached: $TARBALL"
        return 0
    fi
    rm -f "$TARBALL.partial"
    mmdebstrap --architectures="$ARCH" --include="$INCLUDE" --format=tar "$SUITE" \
        "$TARBALL.partial" \
        "deb $MIRROR $SUITE main" \
        "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY $SUITE-security main"
    mv "$TARBALL.partial" "$TARBALL"
}

unpack() {
    ROOT="$(mktemp -d "$CACHE/run-$ARCH.XXXXXX")"
    echo "root: $ROOT"
    tar -C "$ROOT" --numeric-owner -xpf "$TARBALL"
    mount -t proc proc "$ROOT/proc"
    mount --bind /sys "$ROOT/sys"
    mount --bind /dev "$ROOT/dev"
    mount --bind /dev/pts "$ROOT/dev/pts"
    # Name resolution and the host's CA bundle (it may hold a proxy's CA that pip needs).
    rm -f "$ROOT/etc/resolv.conf"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
    if [ -n "$EXTRA_INDEX" ]; then
        printf '[global]\nextra-index-url=%s\n' "$EXTRA_INDEX" >"$ROOT/etc/pip.conf"
    fi
    in_root uname -m
}

copy_repo() {
    local dest="$ROOT/usr/local/src/homehub"
    mkdir -p "$dest"
    if [ "$SOURCE" = head ]; then
        git -C "$REPO" archive --format=tar HEAD | tar -C "$dest" -xf -
        echo "source: git archive $(git -C "$REPO" rev-parse --short HEAD)"
    else
        git -C "$REPO" ls-files -z --cached --others --exclude-standard |
            tar -C "$REPO" --null --ignore-failed-read -T - -cf - | tar -C "$dest" -xf -
        echo "source: work tree of $(git -C "$REPO" rev-parse --short HEAD)"
    fi
}

make_install() {
    in_root bash -c 'cd /usr/local/src/homehub && make install'
    test -x "$ROOT$HOMEHUB"
    test -L "$ROOT/etc/systemd/system/multi-user.target.wants/homehub.service"
}

PORT=""
start_broker() {
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    cat >"$ROOT/tmp/pi-check-mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
EOF
    chroot "$ROOT" "${IN_ROOT_ENV[@]}" /usr/sbin/mosquitto -c /tmp/pi-check-mosquitto.conf \
        >"$ROOT/tmp/mosquitto.log" 2>&1 &
    echo "mosquitto pid $!, port $PORT"
    # Its port answers: a bounded wait for an event (the listener opening), 60 s.
    local i
    for i in $(seq 600); do
        if (: <"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            echo "listening after ~$((i / 10)) s"
            return 0
        fi
        sleep 0.1
    done
    cat "$ROOT/tmp/mosquitto.log"
    return 1
}

write_config() {
    cat >"$ROOT$CONFIG" <<EOF
# Written by scripts/pi-root-check.sh: simulated devices, the root's own mosquitto.
[gateway]
id = "$GATEWAY_ID"

[mqtt]
host = "127.0.0.1"
port = $PORT
status_interval_s = 10.0
# The root shares the host's kernel clock, unsynchronised here: without this the hub
# would hold its readings 300 s waiting for NTP (issue 13). The check is the install.
unsynced_hold_s = 0.0

[panel]
# No GPIO chip in the emulated root: "auto" must run dark with one WARNING.
backend = "auto"

[[devices]]
id = "bp-1"
driver = "simulated"
kind = "blood_pressure"
interval_s = 2.0

[[devices]]
id = "oxi-1"
driver = "simulated"
kind = "pulse_oximeter"
interval_s = 3.0

[[devices]]
id = "scale-1"
driver = "simulated"
kind = "weight"
interval_s = 5.0
burst = 3
EOF
    chroot "$ROOT" chgrp homehub "$CONFIG"
    chmod 0640 "$ROOT$CONFIG"
    as_hub "$HOMEHUB" check-config "$CONFIG"
}

run_hub() {
    local listen_pid hub_pid i
    chroot "$ROOT" "${IN_ROOT_ENV[@]}" "${AS_HUB[@]}" "$HOMEHUB" listen --config "$CONFIG" --json --session "pi-check-$ARCH" \
        >"$ROOT/tmp/listen.out" 2>"$ROOT/tmp/listen.err" &
    listen_pid=$!
    for i in $(seq 1200); do
        grep -q '^listen: subscribed' "$ROOT/tmp/listen.err" 2>/dev/null && break
        kill -0 "$listen_pid" 2>/dev/null || { cat "$ROOT/tmp/listen.err"; return 1; }
        sleep 0.1
    done
    grep -q '^listen: subscribed' "$ROOT/tmp/listen.err" || { echo "listener never subscribed"; return 1; }
    echo "listener subscribed after ~$((i / 10)) s"

    # chroot, env and setpriv exec: $! is the hub itself (qemu runs it in that process).
    chroot "$ROOT" "${IN_ROOT_ENV[@]}" "${AS_HUB[@]}" "$HOMEHUB" run --config "$CONFIG" >"$ROOT/tmp/hub.log" 2>&1 &
    hub_pid=$!
    local deadline=$((SECONDS + RUN_S - 8))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$hub_pid" 2>/dev/null || { echo "the hub exited early:"; cat "$ROOT/tmp/hub.log"; return 1; }
        sleep 1
    done
    echo "-- homehub status (hub running)"
    as_hub "$HOMEHUB" status --config "$CONFIG"
    while [ $SECONDS -lt $((deadline + 8)) ]; do
        kill -0 "$hub_pid" 2>/dev/null || { echo "the hub exited early:"; cat "$ROOT/tmp/hub.log"; return 1; }
        sleep 1
    done
    kill -TERM "$hub_pid"
    HUB_RC=0
    # The unit gives it TimeoutStopSec=15; qemu is slower than a Pi: 60 s.
    for i in $(seq 600); do
        kill -0 "$hub_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$hub_pid" 2>/dev/null; then
        echo "the hub did not stop within 60 s of SIGTERM"
        return 1
    fi
    wait "$hub_pid" || HUB_RC=$?
    echo "-- hub log"
    cat "$ROOT/tmp/hub.log"
    echo "hub exit status $HUB_RC"
    [ "$HUB_RC" -eq 0 ]
}

STATUS_JSON=""
verify() {
    STATUS_JSON="$(as_hub "$HOMEHUB" status --config "$CONFIG" --json)"
    echo "$STATUS_JSON"
    DELIVERED="$(python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["stored"] - d["unsent"])' <<<"$STATUS_JSON")"
    # Every reading marked delivered was acknowledged by the broker, which had already
    # queued it for the listener's session: wait (bounded) until the listener has them.
    local i
    for i in $(seq 600); do
        RECEIVED="$(wc -l <"$ROOT/tmp/listen.out")"
        [ "$RECEIVED" -ge "$DELIVERED" ] && break
        sleep 0.1
    done
    echo "delivered (store) $DELIVERED, received (listener) $RECEIVED"
    cat "$ROOT/tmp/listen.err"
    if grep -q 'invalid payload\|not JSON' "$ROOT/tmp/listen.err"; then
        echo "the listener got payloads that do not match the contract"
        return 1
    fi
    [ "$DELIVERED" -ge 10 ] || { echo "fewer than 10 readings delivered"; return 1; }
    [ "$RECEIVED" -ge "$DELIVERED" ] || { echo "delivered readings missing at the listener"; return 1; }
    # The devices' readings, each of them, are there.
    local dev
    for dev in bp-1 oxi-1 scale-1; do
        grep -q "\"id\":\"$dev\"" "$ROOT/tmp/listen.out" || { echo "no reading of $dev"; return 1; }
    done
    # The hub logged no traceback, and no patient value at INFO (it logs none at all).
    if grep -q 'Traceback' "$ROOT/tmp/hub.log"; then
        echo "traceback in the hub's log"
        return 1
    fi
}

versions() {
    VERSIONS="$(in_root /opt/homehub/venv/bin/python - <<'EOF'
import importlib.metadata as md
import platform
import sys

print(f"machine  {platform.machine()} (Debian {open('/etc/debian_version').read().strip()})")
print(f"python   {sys.version.split()[0]}")
for name in (
    "pip", "homehub", "homehub-contract", "pydantic", "pydantic-core", "rpds-py",
    "dbus-fast", "bleak", "gpiozero", "lgpio", "cryptography", "cffi", "paho-mqtt",
    "bumble",
):
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        print(f"{name:16} (not installed)")
        continue
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    print(f"{name:16} {dist.version:10} {' '.join(tags) or '?'}")
EOF
)"
    echo "$VERSIONS"
}

# -- main --------------------------------------------------------------------------------

START="$(now)"
echo "pi-root-check $ARCH: log in $LOG"
step host host_setup
step cache build_cache
step unpack unpack
step copy copy_repo
step install make_install
step broker start_broker
step check write_config
step run run_hub
step verify verify
step versions versions
# finish (the EXIT trap) prints the summary, cleans up and says PASS.
