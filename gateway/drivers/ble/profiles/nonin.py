"""Nonin Oximetry Service (Nonin 3230 and kin): a vendor service, big-endian fields.

Nonin "3230 Bluetooth Low Energy specification" (doc. 113142-000): service
46a970e0-0d5f-11e2-8b5e-0002a5d5c51b, Continuous Oximetry characteristic
0aad7ea0-0d60-11e2-8e3c-0002a5d5c51b, notified about once a second:

    byte 0      length of the packet (10 in this format)
    byte 1      status bits: 1 weak signal, 2 SmartPoint (measurement passed the
                quality algorithm), 3 searching, 4 sensor attached, 5 low battery,
                6 encrypted
    byte 2      battery voltage, 0.1 V
    bytes 3-4   pulse amplitude index, 0.01 %
    bytes 5-6   packet counter
    byte 7      SpO2, %; 127 = missing
    bytes 8-9   pulse rate, beats/min; 511 = missing
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.drivers.ble.profiles._codec import flags_set
from gateway.errors import DecodeError

SERVICE_UUID = "46a970e0-0d5f-11e2-8b5e-0002a5d5c51b"
OXIMETRY_UUID = "0aad7ea0-0d60-11e2-8e3c-0002a5d5c51b"

SPO2_MISSING = 127
PULSE_MISSING = 511
PACKET_LENGTH = 10
STATUS_BITS = {
    1: "weak_signal",
    2: "smartpoint",
    3: "searching",
    4: "sensor_attached",
    5: "low_battery",
    6: "encrypted",
}


@dataclass(frozen=True, slots=True)
class NoninOximetry:
    counter: int
    spo2: int | None
    pulse_rate: int | None
    pulse_amplitude_index: float
    battery_v: float
    status: tuple[str, ...]

    @property
    def smartpoint(self) -> bool:
        """The device's own verdict that this is a good, final measurement."""
        return "smartpoint" in self.status


def decode_oximetry(data: bytes | bytearray) -> NoninOximetry:
    raw = bytes(data)
    if len(raw) < PACKET_LENGTH:
        raise DecodeError(f"Nonin oximetry: truncated: {len(raw)} byte(s), need {PACKET_LENGTH}")
    if raw[0] != len(raw):
        raise DecodeError("Nonin oximetry: length byte does not match the packet length")
    spo2 = raw[7]
    pulse = int.from_bytes(raw[8:10], "big")
    if spo2 != SPO2_MISSING and spo2 > 100:
        raise DecodeError("Nonin oximetry: SpO2 out of range")
    if pulse != PULSE_MISSING and pulse > 321:  # 18-321 bpm is the device's range
        raise DecodeError("Nonin oximetry: pulse rate out of range")
    return NoninOximetry(
        counter=int.from_bytes(raw[5:7], "big"),
        spo2=None if spo2 == SPO2_MISSING else spo2,
        pulse_rate=None if pulse == PULSE_MISSING else pulse,
        pulse_amplitude_index=int.from_bytes(raw[3:5], "big") / 100,
        battery_v=raw[2] / 10,
        status=flags_set(raw[1], STATUS_BITS),
    )
