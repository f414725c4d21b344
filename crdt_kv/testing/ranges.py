"""An in-memory :class:`~crdt_kv.repair.source.RangeSource` for tests and benchmarks.

:class:`DictSource` holds ``key -> RawEntry`` and computes every fingerprint by brute
force with the same item hash a store keeps (``spec/data-model.md`` section 10: BLAKE2b-256
of the key and the record body), merging by the same rules (the ``lww`` merge order, or
the ``siblings`` join). It lets repair be tested without a store and checked against one.
"""

from __future__ import annotations

from collections.abc import Iterable

from crdt_kv.causal import join, sibling_order
from crdt_kv.layout import body_hash, digest_bytes, pack_siblings, record_body
from crdt_kv.repair.tree import position, state_stamp
from crdt_kv.version import Entry, RawEntry, supersedes

__all__ = ["DictSource", "item_hash"]

_DIGEST_MOD = 1 << 256


def _no_decode(r: RawEntry) -> Entry:
    raise AssertionError("no resolver, nothing to decode")


def item_hash(e: RawEntry, conflicts: str) -> int:
    """The digest contribution of state ``e`` as a store of mode ``conflicts`` holds it."""
    if conflicts == "siblings" and (e.others or e.context):
        body = pack_siblings(e)
    elif conflicts == "siblings":
        body = pack_siblings(RawEntry(e.key, e.value, e.hlc, e.peer, e.deleted))
    else:
        body = record_body(e.hlc, e.peer.encode("utf-8"), e.deleted, e.value)
    return body_hash(e.key, body)


class DictSource:
    """A replica as a plain dict of states; ``gc_horizon`` may be set by the test."""

    def __init__(
        self,
        peer_id: str,
        *,
        conflicts: str = "lww",
        key_encoding: str = "utf-8",
        value_encoding: str = "cbor",
        gc_horizon: int = 0,
    ) -> None:
        self.peer_id = peer_id
        self.conflict_mode = conflicts
        self.key_encoding = key_encoding
        self.value_encoding = value_encoding
        self.gc_horizon = gc_horizon
        self.states: dict[bytes, RawEntry] = {}
        self.quarantine: set[bytes] = set()
        """Keys this replica lost (as a scrub quarantines them): absence never wins."""
        self.members: set[str] = set()
        """The peers whose word a quarantined key's release waits for."""
        self.answered_by: dict[bytes, set[str]] = {}
        """Per quarantined key, the peers that answered for it (shipped or holds none)."""
        self.quarantine_epoch = 0
        """Never moves: tests quarantine keys by hand (:attr:`quarantine`)."""
        self.calls = 0
        self._order = sibling_order(None, _no_decode)

    def _hashed(self) -> list[tuple[int, bytes, int]]:
        return sorted(
            (position(k), k, item_hash(e, self.conflict_mode)) for k, e in self.states.items()
        )

    def digest(self) -> bytes:
        """Sum of the item hashes mod 2**256."""
        return digest_bytes(sum(h for _, _, h in self._hashed()) % _DIGEST_MOD)

    def range_fingerprint(self, lo: int, hi: int) -> tuple[int, int]:
        """Brute force over every state."""
        self.calls += 1
        hs = [h for p, _, h in self._hashed() if lo <= p < hi]
        return sum(hs) % _DIGEST_MOD, len(hs)

    def range_items(self, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
        """Brute force over every state."""
        self.calls += 1
        return [t for t in self._hashed() if lo <= t[0] < hi]

    def range_quarantined(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """The quarantined keys in ``[lo, hi)``."""
        return sorted((p, k) for k in self.quarantine if lo <= (p := position(k)) < hi)

    def answered(self, peer: str, keys: Iterable[bytes], *, epoch: int) -> int:
        """Record ``peer``'s answer; release the keys every member answered for (none
        while there is no member: nobody vouches, as in the store)."""
        released = 0
        for k in keys:
            if k not in self.quarantine:
                continue
            said = self.answered_by.setdefault(k, set())
            said.add(peer)
            if self.members and self.members <= said:
                self.quarantine.discard(k)
                del self.answered_by[k]
                released += 1
        return released

    def raw_entries(self, keys: Iterable[bytes]) -> list[RawEntry]:
        """States held, in the order asked."""
        self.calls += 1
        return [self.states[k] for k in keys if k in self.states]

    def merge(self, e: RawEntry) -> bool:
        """Merge one state by the mode's rules; True if ours changed."""
        old = self.states.get(e.key)
        if self.conflict_mode == "siblings":
            new = join(old, e, self._order)
        elif old is None or supersedes(e, old):
            new = RawEntry(e.key, e.value, e.hlc, e.peer, e.deleted)
        else:
            return False
        if old is not None and item_hash(new, self.conflict_mode) == item_hash(
            old, self.conflict_mode
        ):
            return False
        self.states[e.key] = new
        return True

    def apply_raw(
        self, entries: Iterable[RawEntry], *, cursor: tuple[str, bytes, int] | None = None
    ) -> int:
        """Merge each state; absence wins below the horizon for keys not held."""
        self.calls += 1
        changed = 0
        for e in entries:
            lost = e.key in self.quarantine
            if e.key not in self.states and state_stamp(e) < self.gc_horizon and not lost:
                continue
            changed += self.merge(e)
        return changed

    def drop_collected(self, keys: Iterable[bytes], *, below: int) -> int:
        """Remove the states of ``keys`` whose stamp is below ``below``."""
        self.calls += 1
        gone = [k for k in keys if k in self.states and state_stamp(self.states[k]) < below]
        for k in gone:
            del self.states[k]
        return len(gone)
