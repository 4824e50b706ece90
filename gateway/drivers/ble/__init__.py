"""Bluetooth Low Energy drivers: SIG health profiles over bleak (BlueZ or Bumble)."""
