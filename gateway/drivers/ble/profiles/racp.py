"""Record Access Control Point 0x2A52 (used by the Glucose Service).

GSS org.bluetooth.characteristic.record_access_control_point and GLS 1.0 §4.9:
a request is Op Code (uint8), Operator (uint8), Operand; the server answers by
indication with either "Number of Stored Records Response" (op code 5, operator
0 "null", operand uint16) or "Response Code" (op code 6, operator 0, operand =
request op code uint8 + response code value uint8). Filters on sequence number
use Filter Type 0x01 followed by the uint16 bound(s).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.drivers.ble.profiles._codec import Reader

RACP_UUID = "00002a52-0000-1000-8000-00805f9b34fb"


class OpCode(enum.IntEnum):
    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_RECORDS = 4
    NUMBER_OF_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6


class Operator(enum.IntEnum):
    NULL = 0
    ALL = 1
    LESS_OR_EQUAL = 2
    GREATER_OR_EQUAL = 3
    WITHIN_RANGE = 4
    FIRST = 5
    LAST = 6


class ResponseCode(enum.IntEnum):
    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


FILTER_SEQUENCE_NUMBER = 0x01


@dataclass(frozen=True, slots=True)
class Request:
    op_code: int
    operator: int
    operand: bytes


@dataclass(frozen=True, slots=True)
class NumberOfRecords:
    count: int


@dataclass(frozen=True, slots=True)
class Response:
    request_op_code: int
    code: int  # a ResponseCode value, or an unknown one as sent

    @property
    def ok(self) -> bool:
        return self.code == ResponseCode.SUCCESS

    def describe(self) -> str:
        try:
            return ResponseCode(self.code).name.lower()
        except ValueError:
            return f"response code {self.code}"


def report_records_from(sequence: int) -> bytes:
    """'Report stored records' with sequence number >= `sequence`."""
    return bytes(
        [OpCode.REPORT_STORED_RECORDS, Operator.GREATER_OR_EQUAL, FILTER_SEQUENCE_NUMBER]
    ) + (sequence & 0xFFFF).to_bytes(2, "little")


def report_all_records() -> bytes:
    return bytes([OpCode.REPORT_STORED_RECORDS, Operator.ALL])


def report_last_record() -> bytes:
    return bytes([OpCode.REPORT_STORED_RECORDS, Operator.LAST])


def report_number_from(sequence: int) -> bytes:
    return bytes(
        [OpCode.REPORT_NUMBER_OF_RECORDS, Operator.GREATER_OR_EQUAL, FILTER_SEQUENCE_NUMBER]
    ) + (sequence & 0xFFFF).to_bytes(2, "little")


def abort() -> bytes:
    return bytes([OpCode.ABORT_OPERATION, Operator.NULL])


def decode_request(data: bytes | bytearray) -> Request:
    """For the virtual glucose meter: split a request into its parts."""
    reader = Reader(data, "RACP request")
    op_code, operator = reader.u8(), reader.u8()
    return Request(op_code, operator, reader.take(reader.remaining))


def decode_response(data: bytes | bytearray) -> NumberOfRecords | Response:
    reader = Reader(data, "RACP response")
    op_code, operator = reader.u8(), reader.u8()
    if operator != Operator.NULL:
        raise reader.fail("response operator is not null")
    if op_code == OpCode.NUMBER_OF_RECORDS_RESPONSE:
        return NumberOfRecords(reader.u16())
    if op_code == OpCode.RESPONSE_CODE:
        return Response(reader.u8(), reader.u8())
    raise reader.fail("not a response op code")


def encode_response(request_op_code: int, code: int) -> bytes:
    return bytes([OpCode.RESPONSE_CODE, Operator.NULL, request_op_code, code])


def encode_number_of_records(count: int) -> bytes:
    return bytes([OpCode.NUMBER_OF_RECORDS_RESPONSE, Operator.NULL]) + count.to_bytes(2, "little")
