"""homehub-backend: the reference backend of the homehub contract.

Readings arrive on a shared MQTT 5 subscription, are committed to PostgreSQL (idempotent by
id) and only then acknowledged to the broker and confirmed back to their hub
(``homehub.confirm/1``). It depends on ``homehub_contract`` and never on the hub (``gateway``).
"""

from __future__ import annotations

__version__ = "0.1.0"
