"""The care team talks back (issue 10): commands over MQTT 5 request/response.

`CommandRegistry` holds the commands (`register(name, handler)`), `CommandChannel`
is the inbox route that checks, applies and answers them (gateway.commands.channel
says in which order), `RemoteDevices` the `[[devices]]` the backend manages.
"""

from gateway.commands.channel import CommandChannel, Refusal, TokenBucket
from gateway.commands.devices import RemoteDevices
from gateway.commands.persist import write_json_atomic
from gateway.commands.registry import CommandRegistry, FieldError, FieldProblem

__all__ = [
    "CommandChannel",
    "CommandRegistry",
    "FieldError",
    "FieldProblem",
    "Refusal",
    "RemoteDevices",
    "TokenBucket",
    "write_json_atomic",
]
