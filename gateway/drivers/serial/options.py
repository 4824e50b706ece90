"""Config keys shared by the serial drivers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.drivers.base import DriverOptions


class SerialOptions(DriverOptions):
    """Keys every serial device has."""

    port: str = Field(
        min_length=1,
        description="Serial device path. Prefer /dev/serial/by-id/...: it names the cable and "
        "survives re-plugging, unlike /dev/ttyUSB0.",
    )
    reopen_min_s: float = Field(
        default=1.0, gt=0, le=60, description="First wait before reopening a vanished port."
    )
    reopen_max_s: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait between attempts to reopen it."
    )

    @model_validator(mode="after")
    def _check_reopen(self) -> SerialOptions:
        if self.reopen_min_s > self.reopen_max_s:
            raise ValueError("reopen_min_s must not exceed reopen_max_s")
        return self


class OximeterOptions(SerialOptions):
    """Keys of the streaming pulse oximeters (how samples become readings)."""

    mode: Literal["spot", "continuous"] = Field(
        default="spot",
        description="'spot': one reading per finger-on session; 'continuous': one every "
        "interval_s while a finger is in.",
    )
    window_s: float = Field(
        default=10.0,
        ge=1.0,
        le=600.0,
        description="Spot: the reading is the median of the valid samples over the last "
        "window_s seconds; a session shorter than this gives no reading.",
    )
    max_session_s: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="Spot: emit the reading after this long even if the finger stays in.",
    )
    interval_s: float = Field(
        default=60.0, ge=1.0, le=86400.0, description="Continuous: seconds between readings."
    )

    @model_validator(mode="after")
    def _check_window(self) -> OximeterOptions:
        if self.window_s > self.max_session_s:
            raise ValueError("window_s must not exceed max_session_s")
        return self
