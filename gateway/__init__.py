"""homehub: home hub firmware for digital home follow-up."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("homehub")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
