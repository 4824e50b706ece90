"""Who may pair, and when: the one policy of the BlueZ agent and the Bumble delegate (issue 12).

Pure: the stacks ask, this answers. Only devices in the hub's config pair, only while the
installer's pairing window (the long press) is open, and a passkey request gets the
device's configured `passkey` or nothing. Nothing here logs a passkey or an address above
DEBUG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway.windows import CommandWindow

log = logging.getLogger(__name__)


class Refused(Exception):
    """This request may not be answered now; the message says why (no address in it)."""


@dataclass(slots=True)
class PairingPolicy:
    """What the stack may answer, and to whom: configured devices, inside the window."""

    window: CommandWindow
    #: configured devices that pair, by upper-case address: their fixed passkey, or None
    passkeys: dict[str, int | None] = field(default_factory=dict)

    def expect(self, address: str, passkey: int | None) -> None:
        self.passkeys[address.upper()] = passkey

    @property
    def uses_passkeys(self) -> bool:
        return any(passkey is not None for passkey in self.passkeys.values())

    def allow(self, address: str, what: str) -> None:
        """Return if `address` may pair now; else raise Refused (and say why)."""
        address = address.upper()
        if address not in self.passkeys:
            log.debug("pairing: %s from %s refused: not a configured device", what, address)
            raise Refused("not a device of this hub")
        if not self.window.is_open:
            log.warning("pairing: a request (%s) outside the pairing window, refused", what)
            raise Refused("the hub's pairing window is closed (long-press its button)")
        log.debug("pairing: %s from %s accepted", what, address)

    def passkey(self, address: str) -> int:
        """The device's configured passkey, if it may pair now; else raise Refused."""
        self.allow(address, "passkey request")
        passkey = self.passkeys[address.upper()]
        if passkey is None:
            log.warning("pairing: the device asks for a passkey and none is configured, refused")
            raise Refused("no passkey configured for this device")
        return passkey
