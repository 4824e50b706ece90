"""User Data Service 0x181C: the User Control Point 0x2A9F (consent on multi-user devices).

UDS 1.0, "User Control Point" characteristic and its procedures (Register New
User, Consent), with the op codes and response values of GSS
org.bluetooth.characteristic.user_control_point. The point is written with
response and answers by indication:

- Register New User: Op Code 0x01, Consent Code (uint16, 0..9999); the answer's
  Response Parameter is the new User Index (uint8).
- Consent: Op Code 0x02, User Index (uint8), Consent Code (uint16, 0..9999).
  A multi-user scale sends (and deletes) a user's measurements only once the
  client has given that user's consent code on this connection.
- Response Code: Op Code 0x20, Request Op Code (uint8), Response Value (uint8:
  0x01 Success, 0x02 Op Code Not Supported, 0x03 Invalid Parameter, 0x04
  Operation Failed, 0x05 User Not Authorized), then the procedure's Response
  Parameter, if any.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.drivers.ble.profiles._codec import Reader

SERVICE_UUID = "0000181c-0000-1000-8000-00805f9b34fb"
USER_CONTROL_POINT_UUID = "00002a9f-0000-1000-8000-00805f9b34fb"
USER_INDEX_UUID = "00002a9a-0000-1000-8000-00805f9b34fb"

#: the Consent Code range (UDS 1.0, Consent Code: "0 to 9999")
CONSENT_CODE_MAX = 9999


class OpCode(enum.IntEnum):
    REGISTER_NEW_USER = 0x01
    CONSENT = 0x02
    DELETE_USER_DATA = 0x03
    RESPONSE_CODE = 0x20


class ResponseValue(enum.IntEnum):
    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_PARAMETER = 0x03
    OPERATION_FAILED = 0x04
    USER_NOT_AUTHORIZED = 0x05


_DESCRIPTIONS = {
    ResponseValue.SUCCESS: "success",
    ResponseValue.OP_CODE_NOT_SUPPORTED: "op code not supported",
    ResponseValue.INVALID_PARAMETER: "invalid parameter",
    ResponseValue.OPERATION_FAILED: "operation failed",
    ResponseValue.USER_NOT_AUTHORIZED: "user not authorized",
}


@dataclass(frozen=True, slots=True)
class Response:
    request_op_code: int
    value: int  # a ResponseValue, or an unknown one as sent
    parameter: bytes  # e.g. Register New User's new User Index

    def describe(self) -> str:
        try:
            return _DESCRIPTIONS[ResponseValue(self.value)]
        except ValueError:
            return f"response value {self.value:#04x}"


@dataclass(frozen=True, slots=True)
class Request:
    op_code: int
    parameter: bytes


def _consent_code(code: int) -> bytes:
    if not 0 <= code <= CONSENT_CODE_MAX:
        raise ValueError(f"a consent code is 0..{CONSENT_CODE_MAX}")
    return code.to_bytes(2, "little")


def encode_consent(user_index: int, consent_code: int) -> bytes:
    """Consent(User Index, Consent Code): e.g. user 1, code 1234 -> 02 01 D2 04."""
    if not 0 <= user_index <= 0xFF:
        raise ValueError("a user index is one byte")
    return bytes([OpCode.CONSENT, user_index]) + _consent_code(consent_code)


def encode_register_new_user(consent_code: int) -> bytes:
    return bytes([OpCode.REGISTER_NEW_USER]) + _consent_code(consent_code)


def decode_response(data: bytes | bytearray) -> Response:
    reader = Reader(data, "user control point response")
    if reader.u8() != OpCode.RESPONSE_CODE:
        raise reader.fail("not a response code")
    request_op_code, value = reader.u8(), reader.u8()
    return Response(request_op_code, value, reader.take(reader.remaining))


def decode_request(data: bytes | bytearray) -> Request:
    """For the virtual scale: the op code and its parameter."""
    reader = Reader(data, "user control point request")
    op_code = reader.u8()
    return Request(op_code, reader.take(reader.remaining))


def encode_response(request_op_code: int, value: int, parameter: bytes = b"") -> bytes:
    return bytes([OpCode.RESPONSE_CODE, request_op_code, value]) + parameter
