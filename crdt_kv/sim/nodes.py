"""One simulated replica: its clock, generator, storage, links and connections."""

from __future__ import annotations

import random

from crdt_kv.backends.base import Backend
from crdt_kv.protocol import GcPolicy
from crdt_kv.sim.clocks import SimClock
from crdt_kv.sim.links import Connection, SimLink
from crdt_kv.store import Store

__all__ = ["DOWN", "PENDING", "UP", "SimNode"]

PENDING, UP, DOWN = "pending", "up", "down"


class SimNode:
    """One replica: its clock, generator, storage and (while up) its Store and links.

    ``conns`` maps a peer's index to the connections open with it (either side may have
    dialed); ``links`` are this node's :class:`~crdt_kv.sim.links.SimLink` objects.
    """

    __slots__ = (
        "backend",
        "clock",
        "conns",
        "dirty",
        "gc",
        "gc_sched",
        "hlc_seen",
        "index",
        "last_write_hlc",
        "links",
        "path",
        "peer_id",
        "power_lost",
        "quiet",
        "rng",
        "rogue",
        "snapshot",
        "state",
        "store",
    )

    def __init__(self, index: int, peer_id: str, clock: SimClock, rng: random.Random) -> None:
        self.index = index
        self.peer_id = peer_id
        self.clock = clock
        self.rng = rng
        self.state = UP
        self.store: Store | None = None
        self.backend: Backend | None = None
        self.path: str | None = None
        self.conns: dict[int, list[Connection]] = {}
        self.links: list[SimLink] = []
        self.dirty = False
        self.power_lost = False
        self.quiet = False
        self.snapshot: object | None = None
        """The disk copy a :class:`~crdt_kv.sim.faults.Restore` puts back."""
        self.rogue = False
        self.last_write_hlc = 0
        self.hlc_seen = 0
        self.gc: GcPolicy | None = None
        self.gc_sched: int | None = None

    def __repr__(self) -> str:
        return f"<SimNode {self.peer_id} {self.state}>"
