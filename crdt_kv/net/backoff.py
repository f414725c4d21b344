"""Backward-compatible home of :class:`~crdt_kv.protocol.backoff.Backoff` (now in the core,
where :class:`~crdt_kv.protocol.PeerLink` decides every reconnect)."""

from __future__ import annotations

from crdt_kv.protocol.backoff import Backoff

__all__ = ["Backoff"]
