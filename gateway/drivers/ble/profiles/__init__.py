"""Pure decoders for the Bluetooth SIG health profiles, one module per profile.

Every decoder takes the characteristic's bytes and returns a frozen dataclass or
raises `gateway.errors.DecodeError`. No I/O, no clock, no logging. Timestamps are
returned as the device sent them: naive local time, converted by the driver.

References: "GSS" is the Bluetooth SIG GATT Specification Supplement (v8 and
later); sections are named by its identifiers (org.bluetooth.characteristic.*).
"""
