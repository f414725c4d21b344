"""Session options and counters: validated once, shared by :class:`Session` and
:class:`~crdt_kv.protocol.link.PeerLink`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crdt_kv.errors import ConfigError
from crdt_kv.protocol.framing import check_frame_limit

__all__ = ["MAX_REASON_BYTES", "MODES", "Mode", "SessionStats", "check_options", "clip_reason"]

Mode = Literal["both", "push", "pull"]
MODES: tuple[str, ...] = ("both", "push", "pull")
MAX_REASON_BYTES = 4096


def clip_reason(text: str) -> str:
    """``text`` as valid UTF-8 of at most :data:`MAX_REASON_BYTES` bytes (the wire limit)."""
    raw = text.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return raw.decode("utf-8", "ignore")


def utf8_len(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return 1 << 30  # a lone surrogate cannot go on the wire at all


def check_options(mode: str, cluster_id: object, *, max_frame_bytes: int, **positive: int) -> None:
    """Validate session options; :class:`ConfigError` names the bad one. ``max_frame_bytes``
    must leave room for one maximal entry (:func:`check_frame_limit`)."""
    check_frame_limit(max_frame_bytes)
    if mode not in MODES:
        raise ConfigError(f"unknown sync mode {mode!r}; use one of {', '.join(MODES)}")
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(cluster_id, str) or utf8_len(cluster_id) > 255:
        raise ConfigError(f"cluster_id must be text of at most 255 UTF-8 bytes: {cluster_id!r:.60}")


@dataclass(slots=True)
class SessionStats:
    """Counters of one session (mutable; read them at any time)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    batches_sent: int = 0
    batches_received: int = 0
    entries_sent: int = 0
    entries_received: int = 0
    entries_changed: int = 0
    skew_rejected: int = 0
    errors: int = 0
    divergences: int = 0
    """Rounds whose Verify digests differed although both sides were clean."""
    repairs: int = 0
    """Reconciliations run inside this session (first contact or after a divergence)."""
    repair_entries: int = 0
    """Entries a reconciliation shipped here that changed our state."""
