"""FHIR payload (issue 13): its encoding cost and its effect on the drain.

`fhir_encode`. Subject: `gateway.uplink.fhir.render_fhir` on the stored native payloads
of N readings (the uplink's work per publish with `payload = "fhir"`). Baseline:
`gateway.uplink.payload.encode_reading` of the same readings (what the store does once
per reading, whatever the setting). CPU microseconds of this thread per reading (best
of the rounds: a busy machine inflates wall time, not this) and bytes per reading.

`fhir_drain`. Subject: `bench.drain`'s hub drain with `[mqtt] payload = "fhir"`.
Baseline: the same drain, same pre-filled store, with the default `payload = "homehub"`.
Rounds alternate baseline / subject; medians are compared. Target ratio >= 0.8.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import (
    Result,
    encode_all,
    hub_config,
    make_readings,
    median,
    private_broker,
    scratch_dir,
)
from bench.drain import _hub_drain, prefill, seed_store
from gateway.uplink.fhir import render_fhir
from gateway.uplink.payload import encode_reading

TARGET_RATIO = 0.8


def encoding(*, count: int = 5_000, rounds: int = 5) -> Result:
    readings = make_readings(count, tag="fhir")
    rows = encode_all(readings)
    received = rows[0].received_at
    native_s, fhir_s = [], []
    for _ in range(rounds):
        t0 = time.thread_time()
        for reading, row in zip(readings, rows, strict=True):
            encode_reading(reading, reading_id=row.id, gateway_id="bench", received_at=received)
        native_s.append(time.thread_time() - t0)
        t0 = time.thread_time()
        rendered = [render_fhir(row.payload, version="bench") for row in rows]
        fhir_s.append(time.thread_time() - t0)
    native_bytes = sum(len(r.payload) for r in rows) / count
    fhir_bytes = sum(len(b) for b in rendered) / count
    native_us, fhir_us = min(native_s) / count * 1e6, min(fhir_s) / count * 1e6
    return Result(
        name="fhir_encode",
        metric=f"encode one reading, CPU ({count} readings, best of {rounds})",
        unit="µs",
        value=fhir_us,
        baseline=native_us,
        baseline_label="native homehub.reading/1 encoding",
        better="lower",
        target="none (information)",
        passed=None,
        extra={
            "fhir_bytes_per_reading": round(fhir_bytes),
            "native_bytes_per_reading": round(native_bytes),
            "bytes_ratio": round(fhir_bytes / native_bytes, 1),
        },
    )


def drain(*, count: int = 20_000, rounds: int = 3) -> Result:
    native_rates, fhir_rates = [], []
    with scratch_dir("fhir-drain") as work, private_broker(work) as broker:
        rows = encode_all(make_readings(count, tag="fhir-drain"))
        template = work / "template.sqlite3"
        prefill(template, rows)
        for i in range(rounds):
            for payload, rates in (("homehub", native_rates), ("fhir", fhir_rates)):
                config = hub_config(work / f"{payload}{i}", broker.port, mqtt={"payload": payload})
                seed_store(template, config)
                rates.append(asyncio.run(_hub_drain(config, count)).rate(count))
    fhir_rate, native_rate = median(fhir_rates), median(native_rates)
    return Result(
        name="fhir_drain",
        metric=f"{count} buffered readings -> PUBACK, payload = fhir",
        unit="readings/s",
        value=fhir_rate,
        baseline=native_rate,
        baseline_label='the same hub drain, payload = "homehub"',
        better="higher",
        target=f"ratio >= {TARGET_RATIO}",
        passed=fhir_rate / native_rate >= TARGET_RATIO,
        extra={
            "rounds": rounds,
            "fhir_readings_per_s": [round(r, 1) for r in fhir_rates],
            "native_readings_per_s": [round(r, 1) for r in native_rates],
        },
    )


def run(*, quick: bool = False) -> list[Result]:
    if quick:
        return [encoding(count=500, rounds=2), drain(count=2_000, rounds=1)]
    return [encoding(), drain()]
