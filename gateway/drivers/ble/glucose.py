"""ble.glucose: Glucose Service 0x1808 through its Record Access Control Point.

Each visit asks only for records with sequence number >= the last stored one
+ 1 (all records on the first visit). The last stored sequence number is a
cursor in the store, moved on only after `emit` returned, i.e. after the
record is committed: a disconnect mid-transfer or a hub restart resumes with
no gap (the cursor is never ahead of the store) and no duplicate (a record
read twice has the same source_key, so the store keeps it once).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import Field

if TYPE_CHECKING:
    from bleak import BleakClient

from gateway import mdc
from gateway.drivers.ble.base import BleDriver, BleOptions, next_item
from gateway.drivers.ble.profiles import glucose, racp
from gateway.errors import DecodeError, DriverError
from gateway.mdc import MdcCode, Ucum
from gateway.reading import Kind, Reading, Value

CURSOR = "glucose_sequence"

_SAMPLE_CODES: dict[str | None, MdcCode] = {
    "capillary_whole_blood": mdc.CONC_GLU_CAPILLARY_WHOLEBLOOD,
    "capillary_plasma": mdc.CONC_GLU_CAPILLARY_PLASMA,
    "venous_whole_blood": mdc.CONC_GLU_VENOUS_WHOLEBLOOD,
    "venous_plasma": mdc.CONC_GLU_VENOUS_PLASMA,
    "arterial_whole_blood": mdc.CONC_GLU_ARTERIAL_WHOLEBLOOD,
    "arterial_plasma": mdc.CONC_GLU_ARTERIAL_PLASMA,
    "interstitial_fluid": mdc.CONC_GLU_ISF,
    "control_solution": mdc.CONC_GLU_CONTROL,
}


class GlucoseOptions(BleOptions):
    pair: bool = Field(default=True, description="Glucose meters require pairing (GLS 1.0).")
    transfer_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Give up a transfer silent this long."
    )


class GlucoseDriver(BleDriver):
    Options = GlucoseOptions

    async def session(self, client: BleakClient, disconnected: asyncio.Event) -> bool:
        options = self.options
        assert isinstance(options, GlucoseOptions)
        cursors = self.context.cursors
        if cursors is None:
            raise DriverError("ble.glucose needs the store's cursors")
        last = await cursors.get_cursor(options.id, CURSOR)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        # Measurements and RACP responses arrive in order on one link: one queue
        # keeps that order, so the response is handled after every record.
        await client.start_notify(
            glucose.MEASUREMENT_UUID, lambda _c, d: queue.put_nowait(b"M" + bytes(d))
        )
        await client.start_notify(racp.RACP_UUID, lambda _c, d: queue.put_nowait(b"R" + bytes(d)))
        request = racp.report_all_records() if last is None else racp.report_records_from(last + 1)
        await client.write_gatt_char(racp.RACP_UUID, request, response=True)
        stored = 0
        # "probe": nothing new was found, so ask for the meter's last record: a
        # sequence number below the cursor means the meter started its numbering
        # over (reset, new batteries, a replaced meter) and every record is new.
        probing = False
        probed: int | None = None
        while (
            item := await next_item(queue, disconnected, options.transfer_timeout_s)
        ) is not None:
            kind, data = item[:1], item[1:]
            if kind == b"R":
                response = self._finish(data, stored, quiet=probing)
                nothing_new = (
                    response is not None and response.code == racp.ResponseCode.NO_RECORDS_FOUND
                )
                if not probing and last is not None and stored == 0 and nothing_new:
                    probing = True
                    await client.write_gatt_char(
                        racp.RACP_UUID, racp.report_last_record(), response=True
                    )
                    continue
                if probing and probed is not None and last is not None and probed < last:
                    self.context.logger.warning(
                        "the meter numbers its records anew (reset or replaced); reading all"
                    )
                    probing, probed, last = False, None, None
                    await client.write_gatt_char(
                        racp.RACP_UUID, racp.report_all_records(), response=True
                    )
                    continue
                return True
            try:
                record = glucose.decode_measurement(data)
            except DecodeError as exc:
                self.decode_failed(exc)
                continue
            if probing:
                probed = record.sequence
                continue
            if last is not None and record.sequence <= last:
                continue  # not asked for; the meter ignored the filter
            await self.context.emit(self.with_clock_offset(self.reading(record)))
            # Only now, with the record committed, does the cursor move on; shielded,
            # so a hub stopping right now still records what it stored.
            await asyncio.shield(cursors.set_cursor(options.id, CURSOR, record.sequence))
            last = record.sequence
            stored += 1
        self.context.logger.info("glucose transfer interrupted after %d record(s)", stored)
        return False

    def _finish(self, data: bytes, stored: int, *, quiet: bool = False) -> racp.Response | None:
        log = self.context.logger
        try:
            response = racp.decode_response(data)
        except DecodeError as exc:
            self.decode_failed(exc)
            return None
        if not isinstance(response, racp.Response):
            log.warning("glucose meter answered the record request with a count")
            return None
        if response.code in (racp.ResponseCode.SUCCESS, racp.ResponseCode.NO_RECORDS_FOUND):
            if not quiet:
                log.info("glucose transfer complete: %d new record(s)", stored)
        else:
            log.warning("glucose meter answered the record request with %s", response.describe())
        return response

    def reading(self, record: glucose.GlucoseMeasurement) -> Reading:
        unit = Ucum.MMOL_PER_L if record.unit == "mmol/L" else Ucum.MG_PER_DL
        code = _SAMPLE_CODES.get(record.sample_type, mdc.CONC_GLU_GEN)
        time_fault = "time_fault" in record.sensor_status
        when, source, flags = self.measured_at(record.time, time_fault=time_fault)
        status = record.sensor_status + flags
        if record.control_solution:
            # A control-solution test checks the meter; it is never a patient value.
            code = mdc.CONC_GLU_CONTROL
            status = ("control_solution", *status)
        return Reading(
            device_id=self.options.id,
            driver=self.options.driver,
            kind=Kind.GLUCOSE,
            measured_at=when,
            measured_at_source=source,
            values=(Value.of(code, record.concentration, unit),),
            status=status,
            source_key=f"{self.ble_options.address}/{record.sequence}/{record.time}",
        )
