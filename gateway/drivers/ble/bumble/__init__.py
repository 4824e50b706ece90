"""A bleak backend over Google's Bumble stack: `BumbleScanner` and `BumbleClient`.

Pass them with bleak's own `backend=` argument, with the shared `BumbleAdapter`
as the `bumble=` keyword::

    adapter = BumbleAdapter("tcp-client:127.0.0.1:9000")
    scanner = BleakScanner(backend=BumbleScanner, bumble=adapter)
    client = BleakClient(device, backend=BumbleClient, bumble=adapter)

bleak's backend API is not a stable interface: bleak and bumble are pinned to
exact versions in pyproject.toml and this package is written against them.
"""

from gateway.drivers.ble.bumble.adapter import BumbleAdapter
from gateway.drivers.ble.bumble.client import BumbleClient
from gateway.drivers.ble.bumble.scanner import BumbleScanner

__all__ = ["BumbleAdapter", "BumbleClient", "BumbleScanner"]
