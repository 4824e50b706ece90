"""The uplink: MQTT 5 client and payload encodings."""
