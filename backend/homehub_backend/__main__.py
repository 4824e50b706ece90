"""`python -m homehub_backend` is the `homehub-backend` command."""

from __future__ import annotations

import sys

from homehub_backend.cli import main

sys.exit(main())
