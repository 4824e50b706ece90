"""Virtual devices for every supported profile."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bumble.att import Attribute
from bumble.device import Connection
from bumble.gatt import Characteristic, CharacteristicValue, Service

from gateway.drivers.ble.profiles import (
    blood_pressure,
    glucose,
    heart_rate,
    nonin,
    plx,
    racp,
    temperature,
    weight,
)
from gateway.errors import DecodeError
from gateway.sim.ble import encode
from gateway.sim.ble.air import VirtualAir
from gateway.sim.ble.device import StoredRecordsPeripheral, VirtualPeripheral, short_uuid


def _read_only(uuid: str, value: bytes) -> Characteristic[bytes]:
    return Characteristic(
        short_uuid(uuid), Characteristic.Properties.READ, Characteristic.READABLE, value
    )


class BloodPressureMonitor(StoredRecordsPeripheral):
    service_uuid = blood_pressure.SERVICE_UUID
    measurement_uuid = blood_pressure.MEASUREMENT_UUID

    def extra_characteristics(self) -> list[Characteristic[Any]]:
        return [_read_only(blood_pressure.FEATURE_UUID, b"\x00\x00")]


class Thermometer(StoredRecordsPeripheral):
    service_uuid = temperature.SERVICE_UUID
    measurement_uuid = temperature.MEASUREMENT_UUID


class WeightScale(StoredRecordsPeripheral):
    service_uuid = weight.SERVICE_UUID
    measurement_uuid = weight.MEASUREMENT_UUID

    def extra_characteristics(self) -> list[Characteristic[Any]]:
        return [_read_only(weight.FEATURE_UUID, b"\x1e\x00\x00\x00")]  # 0.005 kg resolution


class PulseOximeter(StoredRecordsPeripheral):
    """PLX spot-check records, indicated from storage."""

    service_uuid = plx.SERVICE_UUID
    measurement_uuid = plx.SPOT_CHECK_UUID

    def extra_characteristics(self) -> list[Characteristic[Any]]:
        return [_read_only(plx.FEATURES_UUID, b"\x08\x00")]  # spot-check timestamp supported


@dataclass(frozen=True, slots=True)
class GlucoseRecord:
    sequence: int
    when: datetime
    mg_dl: float
    #: Sensor Status Annunciation bits, when the record carries them
    status: int | None = None

    def encode(self) -> bytes:
        return encode.glucose(self.sequence, self.when, self.mg_dl, status=self.status)


class GlucoseMeter(VirtualPeripheral):
    """Records behind a Record Access Control Point; pairing required (GLS 1.0 §2.5).

    `drop_after` makes the radio fail after that many records have been sent in
    one connection, in the middle of a transfer; with `quiet_after_drop` the
    meter then stays silent (out of range) until `advertising_enabled` is set.
    """

    service_uuid = glucose.SERVICE_UUID

    def __init__(self, air: VirtualAir, address: str, name: str) -> None:
        self.records: list[GlucoseRecord] = []
        self.drop_after: int | None = None
        self.quiet_after_drop = False
        #: pause between records, to give a test time to kill the hub mid-transfer
        self.record_delay_s = 0.0
        #: highest sequence number a client has been sent: the meter advertises
        #: while it holds newer records, like a meter after a new measurement
        self.reported_up_to = 0
        self.sent_sequences: list[int] = []
        self.measurement: Characteristic[bytes] = Characteristic(
            short_uuid(glucose.MEASUREMENT_UUID),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        self.context: Characteristic[bytes] = Characteristic(
            short_uuid(glucose.CONTEXT_UUID),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        self.racp: Characteristic[bytes] = Characteristic(
            short_uuid(racp.RACP_UUID),
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            Attribute.Permissions.WRITEABLE | Attribute.Permissions.WRITE_REQUIRES_ENCRYPTION,
            CharacteristicValue(write=self._on_racp_write),
        )
        self._procedure: asyncio.Task[None] | None = None
        super().__init__(air, address, name)

    def services(self) -> Sequence[Service]:
        return [
            Service(
                short_uuid(self.service_uuid),
                [
                    self.measurement,
                    self.context,
                    _read_only(glucose.FEATURE_UUID, b"\x00\x00"),
                    self.racp,
                ],
            )
        ]

    def has_data(self) -> bool:
        return bool(self.records) and self.records[-1].sequence > self.reported_up_to

    async def measure(
        self, when: datetime, mg_dl: float, status: int | None = None
    ) -> GlucoseRecord:
        sequence = self.records[-1].sequence + 1 if self.records else 1
        record = GlucoseRecord(sequence, when, mg_dl, status)
        self.records.append(record)
        await self.advertise()
        return record

    def reset(self) -> None:
        """Factory reset (or new batteries on some meters): records and numbering start over."""
        self.records.clear()
        self.reported_up_to = 0

    def _on_racp_write(self, connection: Connection, value: bytes) -> None:
        try:
            request = racp.decode_request(value)
        except DecodeError:
            return
        if request.op_code == racp.OpCode.ABORT_OPERATION:
            if self._procedure is not None:
                self._procedure.cancel()
            self.spawn(self._respond(connection, request.op_code, racp.ResponseCode.SUCCESS))
            return
        self._procedure = asyncio.ensure_future(self._run(connection, request))

    def _select(self, request: racp.Request) -> list[GlucoseRecord] | racp.ResponseCode:
        if request.operator == racp.Operator.ALL:
            return list(self.records)
        if request.operator == racp.Operator.LAST:
            return self.records[-1:]
        if request.operator == racp.Operator.GREATER_OR_EQUAL:
            if len(request.operand) != 3 or request.operand[0] != racp.FILTER_SEQUENCE_NUMBER:
                return racp.ResponseCode.OPERAND_NOT_SUPPORTED
            (low,) = struct.unpack("<H", request.operand[1:])
            return [r for r in self.records if r.sequence >= low]
        return racp.ResponseCode.OPERATOR_NOT_SUPPORTED

    async def _run(self, connection: Connection, request: racp.Request) -> None:
        if request.op_code not in (
            racp.OpCode.REPORT_STORED_RECORDS,
            racp.OpCode.REPORT_NUMBER_OF_RECORDS,
        ):
            await self._respond(
                connection, request.op_code, racp.ResponseCode.OP_CODE_NOT_SUPPORTED
            )
            return
        selected = self._select(request)
        if isinstance(selected, racp.ResponseCode):
            await self._respond(connection, request.op_code, selected)
            return
        if request.op_code == racp.OpCode.REPORT_NUMBER_OF_RECORDS:
            await self.device.indicate_subscriber(
                connection, self.racp, racp.encode_number_of_records(len(selected))
            )
            return
        if not selected:
            await self._respond(connection, request.op_code, racp.ResponseCode.NO_RECORDS_FOUND)
            return
        for sent, record in enumerate(selected):
            if self.connection is not connection:
                return  # the link is gone: a real meter stops the procedure too
            if self.drop_after is not None and sent >= self.drop_after:
                self.drop_after = None
                if self.quiet_after_drop:
                    self.advertising_enabled = False
                await self.drop_link()
                return
            await self.device.notify_subscriber(connection, self.measurement, record.encode())
            self.sent_sequences.append(record.sequence)
            self.reported_up_to = max(self.reported_up_to, record.sequence)
            if self.record_delay_s:
                await asyncio.sleep(self.record_delay_s)
        await self._respond(connection, request.op_code, racp.ResponseCode.SUCCESS)

    async def _respond(self, connection: Connection, op_code: int, code: int) -> None:
        await self.device.indicate_subscriber(
            connection, self.racp, racp.encode_response(op_code, code)
        )


class HeartRateSensor(VirtualPeripheral):
    """Notifies a heart rate every `period_s` while someone listens; always advertising."""

    service_uuid = heart_rate.SERVICE_UUID
    period_s = 0.05

    def __init__(self, air: VirtualAir, address: str, name: str) -> None:
        self.measurement: Characteristic[bytes] = Characteristic(
            short_uuid(heart_rate.MEASUREMENT_UUID),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        self.bpm = 64
        self.rr_1024: tuple[int, ...] = (960, 980)
        super().__init__(air, address, name)
        self.watch_subscription(self.measurement)

    def services(self) -> Sequence[Service]:
        return [Service(short_uuid(self.service_uuid), [self.measurement])]

    def has_data(self) -> bool:
        return True

    async def on_subscribed(
        self, connection: Connection, characteristic: Characteristic[Any]
    ) -> None:
        while self.connection is connection:
            await self.device.notify_subscriber(
                connection, self.measurement, encode.heart_rate(self.bpm, self.rr_1024)
            )
            await asyncio.sleep(self.period_s)


class Nonin3230(VirtualPeripheral):
    """Searching packets first, then SmartPoint packets, about once a `period_s`."""

    service_uuid = nonin.SERVICE_UUID
    period_s = 0.02

    def __init__(self, air: VirtualAir, address: str, name: str) -> None:
        self.measurement: Characteristic[bytes] = Characteristic(
            nonin.OXIMETRY_UUID, Characteristic.Properties.NOTIFY, Characteristic.READABLE, b""
        )
        self.pending: list[tuple[int, int]] = []  # (SpO2, pulse) of finger placements
        self.searching_packets = 3
        self._smart_sent = False
        super().__init__(air, address, name)
        self.watch_subscription(self.measurement)

    def services(self) -> Sequence[Service]:
        return [Service(self.service_uuid, [self.measurement])]

    def has_data(self) -> bool:
        return bool(self.pending)

    async def measure(self, spo2: int, pulse: int) -> None:
        self.pending.append((spo2, pulse))
        await self.advertise()

    async def on_subscribed(
        self, connection: Connection, characteristic: Characteristic[Any]
    ) -> None:
        counter = 0
        while self.connection is connection and self.pending:
            spo2, pulse = self.pending[0]
            smart = counter >= self.searching_packets
            packet = encode.nonin(
                counter, spo2 if smart else None, pulse if smart else None, smartpoint=smart
            )
            await self.device.notify_subscriber(connection, self.measurement, packet)
            self._smart_sent = self._smart_sent or smart
            counter += 1
            await asyncio.sleep(self.period_s)

    def _on_disconnection(self) -> None:
        # The reading was shown and sent: the finger comes out, this measurement is over.
        if self._smart_sent and self.pending:
            self.pending.pop(0)
        self._smart_sent = False
        super()._on_disconnection()
