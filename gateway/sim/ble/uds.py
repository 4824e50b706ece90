"""A virtual User Data Service 0x181C for the virtual multi-user scales and cuffs.

UDS 1.0, User Control Point 0x2A9F (bytes in gateway/drivers/ble/profiles/uds.py):
the client writes Consent(User Index, Consent Code) with response and the service
answers by indication with a Response Code: Success when the index is registered
with that code, User Not Authorized otherwise, Invalid Parameter for a malformed
request. Register New User adds a user with the next free index. Consent holds
for the connection it was given on only.

With `requires_consent`, the device sends its stored measurements only on a
connection where consent was given, like the real multi-user scales.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from bumble.device import Connection
from bumble.gatt import Characteristic, CharacteristicValue, Service

from gateway.drivers.ble.profiles import uds
from gateway.errors import DecodeError
from gateway.sim.ble.device import short_uuid

if TYPE_CHECKING:
    from gateway.sim.ble.device import VirtualPeripheral

log = logging.getLogger(__name__)


class VirtualUds:
    def __init__(self, consent_codes: dict[int, int], *, requires_consent: bool = True) -> None:
        #: registered users: User Index -> Consent Code
        self.consent_codes = dict(consent_codes)
        self.requires_consent = requires_consent
        #: (user index, code) of every Consent request, for tests
        self.requests: list[tuple[int, int]] = []
        #: when each Consent request came (time.monotonic())
        self.request_times: list[float] = []
        #: the user consent was given for, per connection
        self.consented: dict[Connection, int] = {}
        #: set on every successful consent
        self.consent_given = asyncio.Event()
        self._peripheral: VirtualPeripheral | None = None
        self.control_point: Characteristic[bytes] = Characteristic(
            short_uuid(uds.USER_CONTROL_POINT_UUID),
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_write),
        )

    def service(self, peripheral: VirtualPeripheral) -> Service:
        self._peripheral = peripheral
        return Service(short_uuid(uds.SERVICE_UUID), [self.control_point])

    def may_send(self, connection: Connection) -> bool:
        return not self.requires_consent or connection in self.consented

    def forget(self, connection: Connection) -> None:
        self.consented.pop(connection, None)

    def _on_write(self, connection: Connection, value: bytes) -> None:
        try:
            request = uds.decode_request(value)
        except DecodeError:
            return
        op, param = request.op_code, request.parameter
        answer = uds.ResponseValue.OP_CODE_NOT_SUPPORTED
        extra = b""
        if op == uds.OpCode.CONSENT:
            answer = self._consent(connection, param)
        elif op == uds.OpCode.REGISTER_NEW_USER:
            if len(param) != 2 or int.from_bytes(param, "little") > uds.CONSENT_CODE_MAX:
                answer = uds.ResponseValue.INVALID_PARAMETER
            else:
                index = max(self.consent_codes, default=-1) + 1
                self.consent_codes[index] = int.from_bytes(param, "little")
                answer, extra = uds.ResponseValue.SUCCESS, bytes([index])
        peripheral = self._peripheral
        assert peripheral is not None
        # Indicated after the write's response, as the device's stack does.
        peripheral.spawn(
            peripheral.device.indicate_subscriber(
                connection, self.control_point, uds.encode_response(op, answer, extra)
            )
        )

    def _consent(self, connection: Connection, param: bytes) -> uds.ResponseValue:
        if len(param) != 3:
            return uds.ResponseValue.INVALID_PARAMETER
        index, code = param[0], int.from_bytes(param[1:], "little")
        self.requests.append((index, code))
        self.request_times.append(time.monotonic())
        if code > uds.CONSENT_CODE_MAX:
            return uds.ResponseValue.INVALID_PARAMETER
        if self.consent_codes.get(index) != code:
            log.debug("virtual UDS: consent refused")
            return uds.ResponseValue.USER_NOT_AUTHORIZED
        self.consented[connection] = index
        self.consent_given.set()
        return uds.ResponseValue.SUCCESS
