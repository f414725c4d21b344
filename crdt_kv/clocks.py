"""Wall clocks for real processes (the I/O shell; the core never reads time itself)."""

from __future__ import annotations

import time

__all__ = ["system_clock"]


def system_clock() -> int:
    """Unix wall time in integer milliseconds."""
    return time.time_ns() // 1_000_000
