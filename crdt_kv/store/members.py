"""A store's membership table (:class:`~crdt_kv.horizon.Membership`) kept on its backend.

Namespace ``g`` + peer id holds each row (``layout.pack_member``); the table is loaded at
open and every row a call changed is written at once, one small backend batch under the
store's commit lock (writes are rare: one per Hello at most). Losing rows only lowers
values, which only holds the horizon back, so these writes need no fsync of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crdt_kv.backends.base import Backend
from crdt_kv.horizon import DEFAULT_MEMBER_EXPIRY_MS, GossipRow, MemberRow, Membership
from crdt_kv.layout import MEMBERS, MEMBERS_END, pack_member, unpack_member

__all__ = ["Member", "MemberApi", "Members"]


@dataclass(frozen=True, slots=True)
class Member:
    """One known peer as :meth:`Store.members` reports it.

    ``received_through``: every write ``peer`` originated with a stamp up to this is held
    here; ``seen_ms``: last direct contact anyone reported (wall ms); ``reported_d``: the
    peer's own received-through as last heard; ``active``: it holds the horizon back;
    ``partner``: it had a session with this store (a quarantine waits for its answer).
    """

    peer: str
    received_through: int
    seen_ms: int
    reported_d: int
    active: bool
    forgotten_ms: int = 0
    partner: bool = False


class Members:
    """The membership of one store: the pure table plus its persistence and clock.

    ``clock`` is the store's injected wall clock (ms); ``lock`` its commit lock (the
    backend takes one writer at a time); ``fresh_hlc`` issues our current HLC stamp.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        peer_id: str,
        clock: Callable[[], int],
        lock: threading.RLock,
        fresh_hlc: Callable[[], int],
        expiry_ms: int = DEFAULT_MEMBER_EXPIRY_MS,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._lock = lock
        self._fresh_hlc = fresh_hlc
        rows: dict[str, MemberRow] = {}
        for k, blob in backend.iterate(MEMBERS, MEMBERS_END):
            peer = k[len(MEMBERS) :].decode("utf-8", "replace")
            rows[peer] = MemberRow(*unpack_member(peer, blob))
        self.table = Membership(peer_id, expiry_ms=expiry_ms, rows=rows)
        self.hold: Callable[[], int | None] = lambda: None
        """The cap of what our gossip claims (set by the store: the scrub's hold)."""

    def _persist(self, changed: set[str]) -> None:
        if changed:
            rows = self.table.rows
            self._backend.write(
                [
                    (MEMBERS + p.encode("utf-8"), pack_member(rows[p].as_list()))
                    for p in sorted(changed)
                ]
            )

    def heard(self, peer: str, table: Iterable[GossipRow]) -> None:
        """A Hello from ``peer`` carried ``table``."""
        with self._lock:
            self._persist(self.table.heard(peer, table, self._clock()))

    def pulled(self, peer: str, hello_hlc: int, table: Iterable[GossipRow]) -> None:
        """Our first ``done`` batch from ``peer`` this session (see ``Membership.pulled``)."""
        with self._lock:
            self._persist(self.table.pulled(peer, hello_hlc, table, self._clock()))

    def forget(self, peer: str) -> None:
        """Stop ``peer`` holding the horizon back until it is seen again."""
        with self._lock:
            self._persist(self.table.forget(peer, self._clock()))

    def gossip(self, own_hlc: int) -> tuple[GossipRow, ...]:
        """The gossip table for a Hello stamped ``own_hlc``."""
        with self._lock:
            return self.table.gossip(self._clock(), own_hlc, self.hold())

    def horizon(self, grace_ms: int) -> int:
        """The horizon H the membership allows now (see ``Membership.horizon``)."""
        with self._lock:
            return self.table.horizon(self._clock(), self._fresh_hlc(), grace_ms)

    def received_through(self) -> int:
        """D of this replica now."""
        with self._lock:
            return self.table.received_through(self._clock(), self._fresh_hlc())

    def active(self) -> list[str]:
        """The active members other than us now (whose word the horizon waits for)."""
        with self._lock:
            return self.table.members(self._clock())

    def partners(self) -> list[str]:
        """The active members that ever had a session with us (whose answers end a
        quarantine)."""
        with self._lock:
            return self.table.partners(self._clock())

    def rows(self) -> list[Member]:
        """Every known peer, sorted by id."""
        with self._lock:
            now, table = self._clock(), self.table
            return [
                Member(
                    p,
                    r.v,
                    r.seen_ms,
                    r.reported_d,
                    table.active(p, now),
                    r.forgotten_ms,
                    bool(r.partner),
                )
                for p, r in sorted(table.rows.items())
            ]


class MemberApi:
    """The membership methods of :class:`~crdt_kv.store.Store` (a base class, so the
    store module stays small)."""

    _members: Members

    def _check(self) -> None:
        raise NotImplementedError  # pragma: no cover - the Store's

    def _writable(self, op: str) -> None:
        raise NotImplementedError  # pragma: no cover - the Store's

    @property
    def membership(self) -> Members:
        """The membership table replication sessions update (gossip, completed pulls)."""
        return self._members

    def members(self) -> list[Member]:
        """Every peer this replica knows of, sorted by id, with what it received of each
        (:class:`~crdt_kv.store.members.Member`); ``active`` ones hold the horizon back."""
        self._check()
        return self._members.rows()

    def forget_peer(self, peer: str) -> None:
        """Stop ``peer`` holding the collection horizon back (a member gone for good);
        it becomes a member again if it is seen after this."""
        self._writable("forget_peer")
        self._check()
        self._members.forget(peer)
