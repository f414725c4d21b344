"""Penalties for misbehaving source addresses: a node's cheap answer to reconnect floods.

Every hostile frame is refused in milliseconds, so a hostile client simply comes back at
once, and the node's one event loop spends its time accepting, handshaking, reading and
refusing while live pushes wait. :class:`Penalties` remembers, per source host, offences
(a protocol violation, an oversized or refused frame, refused data, a refused identity)
and blocks the host for an exponential time after the ``grace``-th offence in a row:
``base_s``, doubling, at most ``max_s``. While a host is blocked its new connections are
closed as soon as they are accepted, without reading a byte. Timeouts are no offence: a
silent connection costs a slot, not the event loop, and cannot come back faster than its
timeout, while partitions and congestion make honest peers (or a proxy in front of them)
time out too.

Keyed by the TCP source address, never by a claimed peer id: before TLS a peer id is
whatever a Hello says, so penalising ids would let a forger lock a real peer out, while a
TCP source cannot be spoofed by an attacker elsewhere (hosts behind one NAT share a fate).
The ``grace`` free offences keep an honest host that once sent something odd (a restart
mid-frame, an old version) from being blocked at all; a session that ends well forgives
its host, and quiet time decays the level (one step per ``max_s``). The table is bounded
(``max_sources``, least recently offending dropped first), so a spread of sources cannot
grow it without limit.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PENALTY_BASE_S",
    "DEFAULT_PENALTY_GRACE",
    "DEFAULT_PENALTY_MAX_S",
    "MAX_PENALISED_SOURCES",
    "Penalties",
]

DEFAULT_PENALTY_BASE_S = 0.1
"""The first block of a host, doubled at each further offence."""
DEFAULT_PENALTY_MAX_S = 60.0
"""The longest block, and the quiet time that lowers a host's level by one (0: off)."""
DEFAULT_PENALTY_GRACE = 2
"""Offences in a row a host makes before it is blocked."""
MAX_PENALISED_SOURCES = 4096
"""Hosts remembered at most."""


@dataclass(slots=True)
class _Record:
    level: int
    last: float
    until: float


class Penalties:
    """The node's table of offending source hosts (see the module doc). ``offences``
    counts offences by reason; ``blocked`` counts connections closed unread."""

    def __init__(
        self,
        *,
        base_s: float = DEFAULT_PENALTY_BASE_S,
        max_s: float = DEFAULT_PENALTY_MAX_S,
        grace: int = DEFAULT_PENALTY_GRACE,
        max_sources: int = MAX_PENALISED_SOURCES,
    ) -> None:
        if base_s < 0 or max_s < 0 or grace < 0 or max_sources < 1:
            raise ValueError(
                f"penalty settings must be non-negative (max_sources >= 1): base_s={base_s}, "
                f"max_s={max_s}, grace={grace}, max_sources={max_sources}"
            )
        self.base_s = base_s
        self.max_s = max_s
        self.grace = grace
        self.max_sources = max_sources
        self.offences: Counter[str] = Counter()
        self.blocked = 0
        self._table: OrderedDict[str, _Record] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_s > 0 and self.base_s > 0

    def __len__(self) -> int:
        return len(self._table)

    def blocked_for(self, host: str | None, now: float) -> float:
        """Seconds ``host`` stays blocked (0: accept its connection)."""
        if host is None or not self.enabled:
            return 0.0
        rec = self._table.get(host)
        return 0.0 if rec is None else max(0.0, rec.until - now)

    def check(self, host: str | None, now: float) -> bool:
        """True if a connection from ``host`` may be served; else it is counted blocked."""
        if self.blocked_for(host, now) > 0:
            self.blocked += 1
            return False
        return True

    def offend(self, host: str | None, reason: str, now: float) -> float:
        """Count an offence of ``host``; returns for how long it is now blocked."""
        if host is None:
            return 0.0
        self.offences[reason] += 1
        if not self.enabled:
            return 0.0
        rec = self._table.pop(host, None)
        if rec is None:
            rec = _Record(0, now, now)
        else:
            rec.level = max(0, rec.level - int((now - rec.last) // self.max_s))
        rec.level += 1
        rec.last = now
        steps = rec.level - self.grace
        block = 0.0 if steps <= 0 else min(self.max_s, self.base_s * 2.0 ** min(steps - 1, 60))
        rec.until = now + block
        self._table[host] = rec
        while len(self._table) > self.max_sources:
            self._table.popitem(last=False)
        return block

    def forgive(self, host: str | None) -> None:
        """``host`` completed a session well: forget its offences."""
        if host is not None:
            self._table.pop(host, None)
