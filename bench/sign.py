"""Signed readings (issue 14 part 3): the cost of `[mqtt] sign = true`.

`sign_cost`. Subject: `gateway.uplink.sign.ReadingSigner.sign` on N stored native
payloads (the uplink's extra work per publish with `sign = true`: base64url of the
payload, ECDSA P-256 / SHA-256, R || S). CPU microseconds of this thread per reading,
best of the rounds. Baseline: `encode_reading` of the same readings (what the store does
once per reading), for scale.

`sign_drain`. Subject: `bench.drain`'s hub drain with `sign = true` and a fresh EC P-256
key and certificate. Baseline: the same drain, same pre-filled store, without `sign`.
Rounds alternate baseline / subject; medians are compared. Target ratio >= 0.8. This
process's CPU per reading on each side is reported beside it.

Both sides use the bench's plain-TCP broker: `sign = true` needs `cert_file`, which the
config accepts only with TLS (`ca_file`), so the subject's section is made with
`model_copy` (no validation) carrying `sign`, `key_file` and `cert_file` and no `ca_file`
— the uplink then signs with the key and connects without TLS. The ratio is signing
alone; TLS, the same on both sides in a real deployment, would bring it closer to 1.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import (
    Result,
    encode_all,
    hub_config,
    make_readings,
    median,
    private_broker,
    scratch_dir,
)
from bench.drain import _hub_drain, _process_cpu, prefill, seed_store
from gateway.config import HubConfig
from gateway.uplink.payload import encode_reading
from gateway.uplink.sign import ReadingSigner

TARGET_RATIO = 0.8


def make_identity(directory: Path) -> tuple[Path, Path]:
    """A throwaway EC P-256 key (0600) and a self-signed certificate for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "bench.key", directory / "bench.crt"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def cost(*, count: int = 5_000, rounds: int = 5) -> Result:
    readings = make_readings(count, tag="sign")
    rows = encode_all(readings)
    received = rows[0].received_at
    with scratch_dir("sign-cost") as work:
        signer = ReadingSigner.load(*make_identity(work))
    native_s, sign_s = [], []
    for _ in range(rounds):
        t0 = time.thread_time()
        for reading, row in zip(readings, rows, strict=True):
            encode_reading(reading, reading_id=row.id, gateway_id="bench", received_at=received)
        native_s.append(time.thread_time() - t0)
        t0 = time.thread_time()
        signatures = [signer.sign(row.payload) for row in rows]
        sign_s.append(time.thread_time() - t0)
    sign_us, native_us = min(sign_s) / count * 1e6, min(native_s) / count * 1e6
    return Result(
        name="sign_cost",
        metric=f"sign one reading (ES256), CPU ({count} readings, best of {rounds})",
        unit="µs",
        value=sign_us,
        baseline=native_us,
        baseline_label="native homehub.reading/1 encoding",
        better="lower",
        target="none (information)",
        passed=None,
        extra={"jws_bytes": len(signatures[0])},
    )


def signed(config: HubConfig, key: Path, cert: Path) -> HubConfig:
    mqtt = config.mqtt.model_copy(update={"sign": True, "key_file": key, "cert_file": cert})
    return config.model_copy(update={"mqtt": mqtt})


def drain(*, count: int = 20_000, rounds: int = 3) -> Result:
    plain_rates: list[float] = []
    signed_rates: list[float] = []
    cpu: dict[str, list[float]] = {"plain": [], "signed": []}
    with scratch_dir("sign-drain") as work, private_broker(work) as broker:
        key, cert = make_identity(work)
        rows = encode_all(make_readings(count, tag="sign-drain"))
        template = work / "template.sqlite3"
        prefill(template, rows)
        for i in range(rounds):
            for side, rates in (("plain", plain_rates), ("signed", signed_rates)):
                config = hub_config(work / f"{side}{i}", broker.port)
                if side == "signed":
                    config = signed(config, key, cert)
                seed_store(template, config)
                before = _process_cpu()
                rates.append(asyncio.run(_hub_drain(config, count)).rate(count))
                cpu[side].append(_process_cpu() - before)
    signed_rate, plain_rate = median(signed_rates), median(plain_rates)
    return Result(
        name="sign_drain",
        metric=f"{count} buffered readings -> PUBACK, sign = true",
        unit="readings/s",
        value=signed_rate,
        baseline=plain_rate,
        baseline_label="the same hub drain, unsigned",
        better="higher",
        target=f"ratio >= {TARGET_RATIO}",
        passed=signed_rate / plain_rate >= TARGET_RATIO,
        extra={
            "rounds": rounds,
            "signed_readings_per_s": [round(r, 1) for r in signed_rates],
            "plain_readings_per_s": [round(r, 1) for r in plain_rates],
            # This process (hub and its paho thread), all threads: what signing adds
            # whatever the machine's load does to wall time.
            "signed_cpu_us_per_reading": round(median(cpu["signed"]) / count * 1e6, 1),
            "plain_cpu_us_per_reading": round(median(cpu["plain"]) / count * 1e6, 1),
        },
    )


def run(*, quick: bool = False) -> list[Result]:
    if quick:
        return [cost(count=500, rounds=2), drain(count=2_000, rounds=1)]
    return [cost(), drain()]
