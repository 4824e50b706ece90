"""User Data Service consent on multi-user cuffs and scales (issue 12, shared devices).

A multi-user scale with the User Data Service 0x181C keeps a slot per person and
sends a slot's measurements only after the client gave that user's Consent Code
on the connection (UDS 1.0, User Control Point, Consent procedure; the bytes are in
profiles/uds.py). Before subscribing to the measurements, a visit:

- UDS and `consent_code` set: enables the User Control Point's indications, writes
  Consent(user_id, consent_code) and awaits the Response Code indication
  (bounded, CONSENT_TIMEOUT_S). Success: read as usual. User Not Authorized (a
  wrong code, or a slot the scale no longer has) and the other failures: nothing
  is read on this connection, the records stay on the scale, the status says so
  (`devices.{id}.last_error`) and the driver holds off before its next visit (a
  growing backoff), never hammering the scale with a wrong code.
- UDS and no `consent_code`: the status says once that the device may need
  consent; the visit still reads whatever the device sends.
- No UDS: nothing to do.

The consent code is a secret shared with the device (like a PIN): it is never
logged, at any level, nor put in a status message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bleak import BleakClient

from gateway.backoff import Backoff
from gateway.drivers.base import DriverContext
from gateway.drivers.ble.base import next_item
from gateway.drivers.ble.profiles import uds
from gateway.errors import DecodeError

#: bound on the Response Code indication after the Consent write
CONSENT_TIMEOUT_S = 5.0
#: hold-off after a refused consent: first about this long, growing to the maximum
REFUSED_HOLD_OFF_S = 60.0
REFUSED_HOLD_OFF_MAX_S = 1800.0


class UdsConsent:
    """One per driver: the consent step of each visit, and what it reported."""

    def __init__(
        self,
        context: DriverContext,
        noun: str,
        user_id: int | None,
        consent_code: int | None,
    ) -> None:
        self.context = context
        self.noun = noun  # "scale", "cuff": for the installer's message
        self.user_id = user_id
        self._code = consent_code
        self._backoff = Backoff(REFUSED_HOLD_OFF_S, REFUSED_HOLD_OFF_MAX_S)
        self._hold_off_s = 0.0
        #: the message last reported (and logged once); None: nothing reported
        self._reported: str | None = None
        self._hinted = False
        self._warned_no_uds = False

    def hold_off_s(self) -> float:
        """How long to wait after this visit before the next (0: no consent was refused)."""
        delay, self._hold_off_s = self._hold_off_s, 0.0
        return delay

    async def before_reading(self, client: BleakClient, disconnected: asyncio.Event) -> bool:
        """Give consent where the device asks for it; whether to read this connection."""
        point = client.services.get_characteristic(uds.USER_CONTROL_POINT_UUID)
        if point is None or self._code is None or self.user_id is None:
            self._without_consent(has_uds=point is not None)
            return True
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(point, lambda _c, data: queue.put_nowait(bytes(data)))
        await client.write_gatt_char(
            point, uds.encode_consent(self.user_id, self._code), response=True
        )
        return self._outcome(await self._response(queue, disconnected), self.user_id)

    def _without_consent(self, *, has_uds: bool) -> None:
        if not has_uds:
            if self._code is not None and not self._warned_no_uds:
                self._warned_no_uds = True
                self.context.logger.warning(
                    "consent_code is set but the %s has no User Data Service: read without it",
                    self.noun,
                )
        elif not self._hinted:
            self._hinted = True
            self._report(
                f"this {self.noun} uses the User Data Service and may need consent: "
                "set user_id and consent_code (README: Shared cuffs and scales)"
            )

    def _outcome(self, response: uds.Response | None, user: int) -> bool:
        log = self.context.logger
        if response is None:
            return self._refused(f"the {self.noun} did not answer the consent for user {user}")
        if response.value == uds.ResponseValue.SUCCESS:
            log.debug("consent given for user %d", user)
            self._backoff.reset()
            if self._reported is not None:
                self._reported = None
                log.info("the %s accepts the consent now", self.noun)
                self.context.report(None)
            return True
        if response.value == uds.ResponseValue.USER_NOT_AUTHORIZED:
            return self._refused(
                f"the {self.noun} refused consent for user {user}: check consent_code"
            )
        if response.value == uds.ResponseValue.OP_CODE_NOT_SUPPORTED:
            # The device has the service but no consent procedure: nothing to give.
            if not self._warned_no_uds:
                self._warned_no_uds = True
                log.warning("the %s does not support consent: read without it", self.noun)
            return True
        return self._refused(
            f"the {self.noun} answered the consent for user {user} with "
            f"'{response.describe()}': check user_id and consent_code"
        )

    async def _response(
        self, queue: asyncio.Queue[bytes], disconnected: asyncio.Event
    ) -> uds.Response | None:
        """The Consent's Response Code; None when none came in time (or the link went)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONSENT_TIMEOUT_S
        while (left := deadline - loop.time()) > 0:
            data = await next_item(queue, disconnected, left)
            if data is None:
                return None
            try:
                response = uds.decode_response(data)
            except DecodeError as exc:
                self.context.logger.warning("undecodable consent response: %s", exc)
                continue
            if response.request_op_code == uds.OpCode.CONSENT:
                return response
        return None

    def _refused(self, message: str) -> bool:
        self._hold_off_s = self._backoff.next_delay()
        self._report(message)
        self.context.logger.debug("next visit in %.0f s at the earliest", self._hold_off_s)
        return False

    def _report(self, message: str) -> None:
        """In the status, and a WARNING once per message (not per visit)."""
        if message != self._reported:
            self._reported = message
            self.context.logger.warning("%s", message)
        self.context.report(message)
