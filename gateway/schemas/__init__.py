"""JSON Schemas of the backend contract, shipped as package data."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load_schema(name: str) -> dict[str, Any]:
    """Load `reading-1`, `status-1` (or any other `<name>.json` shipped here)."""
    text = resources.files(__package__).joinpath(f"{name}.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
