"""The collection horizon: what every member has received, from explicit membership.

Pure (no clock, no storage): wall times arrive as ``now_ms`` arguments, HLC stamps as
``own_hlc``. For each known peer X we keep

- ``v``: received-through of X's own writes, "this replica holds every write X originated
  with stamp <= v (or a state superseding it)";
- ``seen_ms``: the last direct contact with X anyone reported (wall ms);
- ``reported_d``: X's own received-through D, as reported at that latest contact (a D
  can drop when X learns of a new member, so the freshest report wins, not the largest);
- ``forgotten_ms``: when X was forgotten here (0: never);
- ``partner``: 1 once X had a session with this replica (its Hello reached us): only a
  partner can have handed us a state or taken one from us, so only partners' answers
  end a quarantine (:mod:`crdt_kv.store.scrub`).

``v`` only grows when a pull from a member completes (:meth:`Membership.pulled`): the
member's Hello carried a fresh stamp T (every write it originated with stamp <= T was in
its log then) and its own table; receiving its log up to a ``done`` batch therefore gives
us every write of the member <= T, and every write of X <= its ``v[X]``. ``v``,
``forgotten_ms`` and the pair ``(seen_ms, reported_d)`` (ordered as a pair) only grow by
``max``, so merging gossip in any order, any number of times, gives the same table, and
losing the table (a new store) only lowers values, which is safe: the horizon only holds
back further.

A member is *active* while its ``seen_ms`` is within ``expiry_ms`` of now and it was not
forgotten (or was seen after the forget); while no member was seen within the expiry
(we are the one cut off) none expires. D (our received-through) = min over active members
X != self of ``v[X]`` (0 if we never had a member, our own HLC if all were forgotten); the
horizon H = min over active members
Y (self included) of D_Y (an active member whose D we never heard counts as 0), minus the
grace period. Gossip ``seen_ms`` values are clamped to our own ``now_ms`` so a peer whose
clock runs ahead cannot keep a dead member active forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crdt_kv.errors import ConfigError

__all__ = [
    "DEFAULT_GC_GRACE_MS",
    "DEFAULT_MEMBER_EXPIRY_MS",
    "MAX_GOSSIP_ROWS",
    "GossipRow",
    "MemberRow",
    "Membership",
]

DEFAULT_MEMBER_EXPIRY_MS = 7 * 24 * 3600 * 1000
DEFAULT_GC_GRACE_MS = 3_600_000
MAX_GOSSIP_ROWS = 1024
"""The most rows a gossip table carries (the wire limit; the most recently seen first)."""
_LOGICAL_BITS = 16


@dataclass(frozen=True, slots=True)
class GossipRow:
    """One row of a gossip table: the sender's view of ``peer``."""

    peer: str
    v: int
    seen_ms: int
    d: int


@dataclass(slots=True)
class MemberRow:
    """What we know of one peer (mutable: the table's own record)."""

    v: int = 0
    seen_ms: int = 0
    reported_d: int = 0
    forgotten_ms: int = 0
    partner: int = 0

    def as_list(self) -> list[int]:
        """The persisted form ``[v, seen_ms, reported_d, forgotten_ms, partner]``."""
        return [self.v, self.seen_ms, self.reported_d, self.forgotten_ms, self.partner]


class Membership:
    """The table of known peers and the horizon derived from it (see the module doc).

    ``self_id`` is this replica's peer id (never a row of its own). ``rows`` restores a
    persisted table. Every mutating method returns the set of peer ids whose row changed,
    so the caller persists exactly those.
    """

    def __init__(
        self,
        self_id: str,
        *,
        expiry_ms: int = DEFAULT_MEMBER_EXPIRY_MS,
        rows: dict[str, MemberRow] | None = None,
    ) -> None:
        if expiry_ms <= 0:
            raise ConfigError(f"member expiry must be > 0 ms, got {expiry_ms!r}")
        self.self_id = self_id
        self.expiry_ms = expiry_ms
        self.rows: dict[str, MemberRow] = dict(rows or {})
        self.rows.pop(self_id, None)
        self._gossip_rows: dict[str, GossipRow] = {}
        """The last gossip row built per member, reused while its row is unchanged: a
        Hello to each connection rebuilt up to 1,023 of them (bench_hostile)."""

    # --- inputs -------------------------------------------------------------------------

    def heard(self, peer: str, table: Iterable[GossipRow], now_ms: int) -> set[str]:
        """``peer``'s Hello arrived (direct contact): merge its ``seen_ms`` and reported D
        values. ``v`` is not touched: only a completed pull proves receipt."""
        changed = self._merge(self._direct(peer, table, now_ms), now_ms, with_v=False)
        if peer != self.self_id:
            row = self._row(peer)
            if now_ms > row.seen_ms or not row.partner:
                row.seen_ms = max(row.seen_ms, now_ms)
                row.partner = 1
                changed.add(peer)
        return changed

    def pulled(
        self, peer: str, hello_hlc: int, table: Iterable[GossipRow], now_ms: int
    ) -> set[str]:
        """Our receiving side got ``peer``'s first ``done`` batch of a session whose Hello
        carried ``hello_hlc`` and ``table``: v[peer] >= hello_hlc, v[X] >= table's v[X];
        also a direct contact, like :meth:`heard`. A sender whose own row claims less
        than ``hello_hlc`` (it lost records: :mod:`crdt_kv.store.scrub`) is taken at its
        row's word."""
        table = list(table)
        own = [g.v for g in table if g.peer == peer]
        if own:
            hello_hlc = min(hello_hlc, own[0])
        changed = self._merge(self._direct(peer, table, now_ms), now_ms, with_v=True)
        if peer != self.self_id:
            row = self._row(peer)
            if hello_hlc > row.v or now_ms > row.seen_ms or not row.partner:
                row.v = max(row.v, hello_hlc)
                row.seen_ms = max(row.seen_ms, now_ms)
                row.partner = 1
                changed.add(peer)
        return changed

    def forget(self, peer: str, now_ms: int) -> set[str]:
        """Stop ``peer`` holding the horizon back at once (until it is seen after now)."""
        if peer == self.self_id:
            return set()
        row = self._row(peer)
        row.forgotten_ms = max(row.forgotten_ms, now_ms, row.seen_ms)
        return {peer}

    # --- outputs ------------------------------------------------------------------------

    def active(self, peer: str, now_ms: int) -> bool:
        """Whether ``peer`` is a known member that holds the horizon back now.

        Expiry needs fresh news: while no member at all was seen within the expiry (we
        are the one cut off, or everyone else is gone: we cannot tell), nobody expires,
        so an isolated replica never collects, or refuses, on its own say-so."""
        row = self.rows.get(peer)
        if row is None:
            return False
        if row.forgotten_ms and row.seen_ms <= row.forgotten_ms:
            return False
        return now_ms - row.seen_ms <= self.expiry_ms or not self._connected(now_ms)

    def _connected(self, now_ms: int) -> bool:
        return any(now_ms - r.seen_ms <= self.expiry_ms for r in self.rows.values())

    def members(self, now_ms: int) -> list[str]:
        """Active members other than ourselves, sorted (:meth:`active` of each row, with
        the fresh-news test done at most once, not once per expired row)."""
        out: list[str] = []
        connected: bool | None = None
        for p, row in self.rows.items():
            if row.forgotten_ms and row.seen_ms <= row.forgotten_ms:
                continue
            if now_ms - row.seen_ms > self.expiry_ms:
                if connected is None:
                    connected = self._connected(now_ms)
                if connected:
                    continue
            out.append(p)
        return sorted(out)

    def partners(self, now_ms: int) -> list[str]:
        """Active members that ever had a session with us, sorted."""
        return [p for p in self.members(now_ms) if self.rows[p].partner]

    def received_through(self, now_ms: int, own_hlc: int) -> int:
        """D: every active member's writes up to this stamp are held here.

        0 for a replica that never had a member: it has received nothing yet, and a
        horizon of its own would make it refuse the history of the cluster it joins. Our
        own HLC when every member was forgotten (the operator says we are alone)."""
        return self._received_through(self.members(now_ms), own_hlc)

    def _received_through(self, members: list[str], own_hlc: int) -> int:
        return min((self.rows[p].v for p in members), default=own_hlc if self.rows else 0)

    def horizon(self, now_ms: int, own_hlc: int, grace_ms: int) -> int:
        """H: the stamp below which every active member has received everything, minus
        ``grace_ms`` (never below 0)."""
        low = self.received_through(now_ms, own_hlc)
        for p in self.members(now_ms):
            low = min(low, self.rows[p].reported_d)
        return max(0, low - (grace_ms << _LOGICAL_BITS))

    def gossip(self, now_ms: int, own_hlc: int, hold: int | None = None) -> tuple[GossipRow, ...]:
        """The table for our Hello: our own row, then the active members, most recently
        seen first, at most :data:`MAX_GOSSIP_ROWS` rows in all.

        ``hold``: this replica lost records whose stamps it does not know (quarantined
        keys), so it claims to hold no one's writes beyond ``hold`` (a horizon every
        member had reached when they were lost): every ``v`` and ``d`` is capped at it,
        and the horizon cannot pass a state only the lost records carried."""
        cap = (1 << 64) if hold is None else hold
        members = self.members(now_ms)
        own = GossipRow(
            self.self_id,
            min(own_hlc, cap),
            now_ms,
            min(self._received_through(members, own_hlc), cap),
        )
        rows = self.rows
        # ``members`` is sorted by id and the sort is stable: ties stay in id order.
        active = sorted(members, key=lambda p: rows[p].seen_ms, reverse=True)
        out = [own]
        add, cache = out.append, self._gossip_rows
        for p in active[: MAX_GOSSIP_ROWS - 1]:
            r = rows[p]
            g = cache.get(p)
            if g is None or g.v != r.v or g.seen_ms != r.seen_ms or g.d != r.reported_d:
                g = cache[p] = GossipRow(p, r.v, r.seen_ms, r.reported_d)
            if g.v > cap or g.d > cap:
                g = GossipRow(p, min(g.v, cap), g.seen_ms, min(g.d, cap))
            add(g)
        return tuple(out)

    # --- internals ----------------------------------------------------------------------

    def _row(self, peer: str) -> MemberRow:
        row = self.rows.get(peer)
        if row is None:
            row = self.rows[peer] = MemberRow()
        return row

    @staticmethod
    def _direct(peer: str, table: Iterable[GossipRow], now_ms: int) -> list[GossipRow]:
        """The table with the sender's own row dated by our clock: its D is current."""
        return [GossipRow(g.peer, g.v, now_ms, g.d) if g.peer == peer else g for g in table]

    def _merge(self, table: Iterable[GossipRow], now_ms: int, *, with_v: bool) -> set[str]:
        changed: set[str] = set()
        for g in table:
            if g.peer == self.self_id:
                continue
            row = self._row(g.peer)
            before = row.as_list()
            # (seen_ms, D) is one register: the D reported at the latest contact wins.
            seen = (min(g.seen_ms, now_ms), g.d)
            row.seen_ms, row.reported_d = max((row.seen_ms, row.reported_d), seen)
            if with_v:
                row.v = max(row.v, g.v)
            if row.as_list() != before:
                changed.add(g.peer)
        return changed
