"""The knobs of the replication policy that :class:`~crdt_kv.protocol.PeerLink` applies."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crdt_kv.errors import ConfigError
from crdt_kv.protocol.backoff import Backoff
from crdt_kv.protocol.messages import DEFAULT_MAX_FRAME_BYTES
from crdt_kv.protocol.options import check_options
from crdt_kv.protocol.replica import Replica
from crdt_kv.protocol.session import Session

__all__ = ["LinkConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """Every knob of the replication policy, in seconds where it is a time.

    ``idle_timeout_s`` fails a session whose peer sent nothing that long;
    ``live_idle_timeout_s`` replaces it once both Hellos asked for live streaming. A live
    session that has nothing to say sends a keep-alive (an empty batch) every
    ``keepalive_s`` (default a third of the shorter of the two), so only a peer that really
    went silent is dropped, and a connection that said Hello and then nothing does not hold
    a slot for longer than that.
    ``min_sync_interval_s`` defaults to a tenth of ``sync_interval_s`` (at least 50 ms).
    ``push_delay_s`` coalesces live pushes (0: push on every commit).
    """

    mode: str = "both"
    live: bool = True
    cluster_id: str = "default"
    handshake_timeout_s: float | None = 10.0
    idle_timeout_s: float | None = 30.0
    live_idle_timeout_s: float | None = 60.0
    keepalive_s: float | None = None
    flush_timeout_s: float = 10.0
    sync_interval_s: float = 5.0
    min_sync_interval_s: float | None = None
    backoff_base_s: float = 0.2
    backoff_max_s: float = 30.0
    backoff_jitter: float = 0.5
    push_delay_s: float = 0.0
    max_batch_entries: int = 1000
    max_batch_bytes: int = 1 << 20
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    window: int = 4
    repair: bool = True
    """Sessions verify digests after a round and repair divergences and first contacts
    (:mod:`crdt_kv.protocol.verify`); needs a replica that is a range source."""
    verify_interval_s: float | None = 600.0
    """A live session never completes, so it never verifies: a ``dial`` link whose live
    session has lasted this long, or whose peer owes an answer for a key of our
    quarantine (``Replica.wants_probe``), ends it once settled and syncs one round
    (which verifies and repairs), then goes live again. None: only rounds verify."""
    allowed_peers: frozenset[str] | None = None
    """Peer ids admitted (None: any); others are refused at the handshake (code 7). Only
    meaningful when the transport authenticates peer ids (TLS, ``crdt_kv.net.tls``)."""

    def __post_init__(self) -> None:
        check_options(
            self.mode,
            self.cluster_id,
            max_batch_entries=self.max_batch_entries,
            max_batch_bytes=self.max_batch_bytes,
            max_frame_bytes=self.max_frame_bytes,
            window=self.window,
        )
        if not self.sync_interval_s > 0 or not 0 < self.min_interval <= self.sync_interval_s:
            raise ConfigError(
                "need 0 < min_sync_interval_s <= sync_interval_s, got "
                f"{self.min_sync_interval_s!r} and {self.sync_interval_s!r}"
            )
        for name in (
            "handshake_timeout_s",
            "idle_timeout_s",
            "live_idle_timeout_s",
            "keepalive_s",
            "verify_interval_s",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value!r}")
        if not self.flush_timeout_s > 0 or not self.push_delay_s >= 0:
            raise ConfigError("flush_timeout_s must be > 0 and push_delay_s >= 0")
        self.backoff(random.Random(0))  # validates the backoff fields
        allowed = self.allowed_peers
        if allowed is not None:
            if isinstance(allowed, str) or not all(isinstance(p, str) and p for p in allowed):
                raise ConfigError(f"allowed_peers must be a list of peer ids, got {allowed!r}")
            object.__setattr__(self, "allowed_peers", frozenset(allowed))

    @property
    def min_interval(self) -> float:
        """The fastest round interval, reached while writes are frequent."""
        if self.min_sync_interval_s is not None:
            return self.min_sync_interval_s
        return max(min(0.05, self.sync_interval_s), self.sync_interval_s / 10)

    @property
    def keepalive(self) -> float:
        """Seconds of silence after which a live sender sends a keep-alive."""
        if self.keepalive_s is not None:
            return self.keepalive_s
        idle = [t for t in (self.idle_timeout_s, self.live_idle_timeout_s) if t is not None]
        return min(idle) / 3 if idle else math.inf

    def backoff(self, rng: random.Random) -> Backoff:
        """A fresh reconnect backoff drawing its jitter from ``rng``."""
        return Backoff(
            base=self.backoff_base_s,
            maximum=self.backoff_max_s,
            jitter=self.backoff_jitter,
            rng=rng,
        )

    def with_options(self, options: Mapping[str, Any]) -> LinkConfig:
        """A copy with ``options`` (field names) replaced; unknown names are a ConfigError."""
        known = {f.name for f in dataclasses.fields(self)}
        for name in options:
            if name not in known:
                raise ConfigError(f"unknown replication option {name!r}")
        return dataclasses.replace(self, **options)

    def session(
        self,
        replica: Replica,
        *,
        live: bool,
        defer_storage: bool,
        peer_identity: str | None = None,
    ) -> Session:
        """A new session with these options; ``peer_identity``: who the transport
        authenticated the peer as (see :class:`Session`)."""
        return Session(
            replica,
            mode=self.mode,
            live=live,
            cluster_id=self.cluster_id,
            max_batch_entries=self.max_batch_entries,
            max_batch_bytes=self.max_batch_bytes,
            max_frame_bytes=self.max_frame_bytes,
            window=self.window,
            defer_storage=defer_storage,
            repair=self.repair,
            peer_identity=peer_identity,
            allowed_peers=self.allowed_peers,
        )
