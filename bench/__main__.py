"""`python -m bench`: every benchmark in turn."""

from __future__ import annotations

from bench import ble_latency

if __name__ == "__main__":
    ble_latency.main()
