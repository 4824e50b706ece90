"""Virtual BLE medical devices: Bumble GATT servers on a virtual radio (`VirtualAir`)."""
