"""Devices that indicate stored measurements and leave: BP cuffs, thermometers, scales, PLX.

The session subscribes to the measurement characteristic and stores each
record as it arrives, until the device drops the link (as these devices do
when they have sent everything) or stays silent for `idle_s`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.device import BLEDevice

from gateway import mdc
from gateway.drivers.base import DriverContext, DriverOptions
from gateway.drivers.ble.base import BleDriver, BleOptions, next_item
from gateway.drivers.ble.profiles import blood_pressure, plx, temperature, weight
from gateway.drivers.ble.runtime import BleRuntime
from gateway.drivers.ble.uds import UdsConsent
from gateway.errors import DecodeError
from gateway.mdc import MdcCode, Ucum
from gateway.reading import Kind, Reading, Value


class StoredOptions(BleOptions):
    idle_s: float = Field(
        default=10.0, gt=0, le=600, description="Disconnect after this long without a record."
    )


class SharedDeviceOptions(StoredOptions):
    user_id: int | None = Field(
        default=None,
        ge=0,
        le=254,
        description="Shared cuff or scale: keep only this user's records (the User ID the "
        "device sends, GSS 0x2A35/0x2A9D); others' are counted and skipped. Not set: all.",
    )
    consent_code: int | None = Field(
        default=None,
        ge=0,
        le=9999,
        description="A device with the User Data Service that asks for consent: user "
        "`user_id`'s Consent Code (0..9999, set when the user was registered on it).",
    )

    @field_validator("consent_code")
    @classmethod
    def _consent_is_for_a_user(cls, code: int | None, info: ValidationInfo) -> int | None:
        # UDS 1.0 Consent takes a User Index and its code: the code alone means nothing.
        # A field validator (user_id is validated before), so the error names this field.
        if code is not None and info.data.get("user_id") is None:
            raise ValueError("consent_code is for one user: set user_id (its user index) too")
        return code


class StoredRecordsDriver(BleDriver):
    Options = StoredOptions
    measurement_uuid: ClassVar[str]
    #: what the installer's messages call the device
    noun: ClassVar[str] = "device"

    def __init__(self, options: DriverOptions, context: DriverContext) -> None:
        super().__init__(options, context)
        #: multi-user devices' User Data Service consent (issue 12); see uds.py
        self.uds: UdsConsent | None = None
        if isinstance(options, SharedDeviceOptions):
            self.uds = UdsConsent(context, self.noun, options.user_id, options.consent_code)

    async def _visit(self, runtime: BleRuntime, device: BLEDevice) -> bool:
        complete = await super()._visit(runtime, device)
        # After a refused consent, disconnected: the next visit waits (a backoff),
        # however often the device advertises its records.
        if self.uds is not None and (delay := self.uds.hold_off_s()) > 0:
            await asyncio.sleep(delay)
        return complete

    async def session(self, client: BleakClient, disconnected: asyncio.Event) -> bool:
        options = self.options
        assert isinstance(options, StoredOptions)
        if self.uds is not None and not await self.uds.before_reading(client, disconnected):
            return True  # no consent: nothing is read, the records stay on the device
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(
            self.measurement_uuid, lambda _c, data: queue.put_nowait(bytes(data))
        )
        while (data := await next_item(queue, disconnected, options.idle_s)) is not None:
            try:
                reading = self.reading(data)
            except DecodeError as exc:
                self.decode_failed(exc)
                continue
            if reading is not None:
                await self.context.emit(self.with_clock_offset(reading))
        return True

    def reading(self, data: bytes) -> Reading | None:
        """The record as a Reading; None: not this patient's (a shared device)."""
        raise NotImplementedError

    def for_this_patient(self, user_id: int | None) -> bool:
        """Whether a record with this User ID (None: absent or "unknown user") is kept.

        With `user_id` set, a record of another user, or of an unknown one (it could
        be either person), is never published as this patient's: it is counted in
        the status and skipped. Nothing about it is logged above DEBUG.
        """
        wanted = getattr(self.options, "user_id", None)
        if wanted is None or user_id == wanted:
            return True
        what = "skipped_unknown_user" if user_id is None else "skipped_other_user"
        self.context.count(what)
        self.context.logger.debug("record of user %s skipped (user_id = %d)", user_id, wanted)
        return False

    def source_key(self, *parts: object) -> str:
        return "/".join([self.ble_options.address, *(str(p) for p in parts)])


class BloodPressureDriver(StoredRecordsDriver):
    """ble.blood_pressure: Blood Pressure Service 0x1810 (0x2A36 progress is ignored)."""

    Options = SharedDeviceOptions
    measurement_uuid = blood_pressure.MEASUREMENT_UUID
    noun = "cuff"

    def reading(self, data: bytes) -> Reading | None:
        m = blood_pressure.decode_measurement(data)
        if not self.for_this_patient(m.user_id):
            return None
        unit = Ucum.KPA if m.unit == "kPa" else Ucum.MMHG
        values = [
            Value.of(mdc.PRESS_BLD_NONINV_SYS, m.systolic, unit),
            Value.of(mdc.PRESS_BLD_NONINV_DIA, m.diastolic, unit),
            Value.of(mdc.PRESS_BLD_NONINV_MEAN, m.mean_arterial, unit),
        ]
        if m.pulse_rate is not None:
            values.append(Value.of(mdc.PULS_RATE_NON_INV, m.pulse_rate, Ucum.PER_MIN))
        when, source, flags = self.measured_at(m.timestamp)
        return Reading(
            device_id=self.options.id,
            driver=self.options.driver,
            kind=Kind.BLOOD_PRESSURE,
            measured_at=when,
            measured_at_source=source,
            values=tuple(values),
            status=m.status + flags,
            source_key=None if m.timestamp is None else self.source_key(m.timestamp, m.user_id),
        )


_TEMPERATURE_SITES: dict[str | None, MdcCode] = {
    "armpit": mdc.TEMP_AXILLA,
    "body": mdc.TEMP_BODY,
    "ear": mdc.TEMP_EAR,
    "finger": mdc.TEMP_FINGER,
    "gastro_intestinal": mdc.TEMP_GIT,
    "mouth": mdc.TEMP_ORAL,
    "rectum": mdc.TEMP_RECT,
    "toe": mdc.TEMP_TOE,
    "tympanum": mdc.TEMP_TYMP,
}


class ThermometerDriver(StoredRecordsDriver):
    """ble.thermometer: Health Thermometer Service 0x1809."""

    measurement_uuid = temperature.MEASUREMENT_UUID

    def reading(self, data: bytes) -> Reading:
        m = temperature.decode_measurement(data)
        code = _TEMPERATURE_SITES.get(m.site, mdc.TEMP_BODY)
        when, source, flags = self.measured_at(m.timestamp)
        return Reading(
            device_id=self.options.id,
            driver=self.options.driver,
            kind=Kind.TEMPERATURE,
            measured_at=when,
            measured_at_source=source,
            values=(Value.of(code, m.value, Ucum.DEG_F if m.unit == "degF" else Ucum.CEL),),
            status=flags,
            source_key=None if m.timestamp is None else self.source_key(m.timestamp),
        )


class WeightScaleDriver(StoredRecordsDriver):
    """ble.weight_scale: Weight Scale Service 0x181D."""

    Options = SharedDeviceOptions
    measurement_uuid = weight.MEASUREMENT_UUID
    noun = "scale"

    def reading(self, data: bytes) -> Reading | None:
        m = weight.decode_measurement(data)
        if not self.for_this_patient(m.user_id):
            return None
        imperial = m.system == "imperial"
        values = [Value.of(mdc.MASS_BODY_ACTUAL, m.weight, Ucum.LB if imperial else Ucum.KG)]
        if m.bmi is not None:
            values.append(Value.of(mdc.RATIO_MASS_BODY_LEN_SQ, m.bmi, Ucum.KG_PER_M2))
        if m.height is not None:
            values.append(Value.of(mdc.LEN_BODY_ACTUAL, m.height, Ucum.IN if imperial else Ucum.M))
        when, source, flags = self.measured_at(m.timestamp)
        status = flags + (("measurement_unsuccessful",) if m.weight is None else ())
        return Reading(
            device_id=self.options.id,
            driver=self.options.driver,
            kind=Kind.WEIGHT,
            measured_at=when,
            measured_at_source=source,
            values=tuple(values),
            status=status,
            source_key=None if m.timestamp is None else self.source_key(m.timestamp, m.user_id),
        )


class PulseOximeterDriver(StoredRecordsDriver):
    """ble.pulse_oximeter: Pulse Oximeter Service 0x1822, spot-check measurements 0x2A5E."""

    measurement_uuid = plx.SPOT_CHECK_UUID

    def reading(self, data: bytes) -> Reading:
        m = plx.decode_spot_check(data)
        when, source, flags = self.measured_at(m.timestamp)
        return Reading(
            device_id=self.options.id,
            driver=self.options.driver,
            kind=Kind.PULSE_OXIMETER,
            measured_at=when,
            measured_at_source=source,
            values=(
                Value.of(mdc.PULS_OXIM_SAT_O2, m.spo2, Ucum.PERCENT),
                Value.of(mdc.PULS_OXIM_PULS_RATE, m.pulse_rate, Ucum.PER_MIN),
            ),
            status=m.status + flags,
            source_key=None if m.timestamp is None else self.source_key(m.timestamp),
        )
