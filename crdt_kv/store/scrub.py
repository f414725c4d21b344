"""Scrubbing (issue 10): find records that rotted on this replica's disk, and quarantine.

Storage can lose or damage a record behind the store's back (a bit flip that the disk's
block checksums turn into a read error, a lost write, a bad sector). The change log, the
position index and the bucket fingerprints still describe the old record, so the digest
lies, reads fail, and a repair would show peers a hole where the key was: below the
collection horizon, absence wins, and one replica's local loss would become a deletion
everywhere. The scrub recomputes each bucket from its index entries and records:

- an index entry whose record is gone (*missing*), or a record that does not parse
  (*corrupt*), is rotten: the record, its index entry and every change-log entry naming
  the key are removed, and the key goes into *quarantine* (``q`` + key);
- a record without an index entry (*unindexed*) gets its entry back;
- the bucket takes the recomputed count and sum, the digest moves by the difference and,
  when anything was wrong, the live count is recounted from the records;

all in one atomic batch with the counters (``mgc``, as a collection writes), and the
in-memory state only after the backend accepted it. A record altered so that it still
parses cannot be told from a write (records carry no checksum of their own): it is
trusted, and only its bucket's fingerprint is corrected (``mismatched``).

A quarantined key is one this replica lost and does not know the state of: absence never
wins for it (an incoming state is taken whatever its stamp) and repair announces it to
peers so they send their state instead of dropping theirs. It is released once every
active partner has *answered* for it in a repair since it was quarantined: shipped its
state (merged here) or said it holds none (:meth:`Scrubber.answered`). One peer's state
is not enough: it may lack a version only the lost record held, which another member
still holds, and once the quarantine no longer caps the gossip the horizon would pass
that version and the join (siblings) or the repair (a collected tombstone) would take it
for collected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crdt_kv.backends.base import Backend, Op
from crdt_kv.errors import CorruptionError
from crdt_kv.fingerprint import (
    BUCKET_SHIFT,
    BUCKET_WIDTH,
    BUCKETS,
    bucket_of,
    position,
    position_bytes,
)
from crdt_kv.layout import (
    DATA,
    DATA_END,
    LOG,
    LOG_END,
    body_hash,
    pack_u64,
    record_is_deleted,
    unpack_log,
    unpack_record,
    unpack_u64,
)
from crdt_kv.layout_fingerprints import (
    INDEX,
    META_GC,
    META_QUARANTINE_HOLD,
    QUARANTINE,
    QUARANTINE_END,
    index_bound,
    pack_gc_state,
)
from crdt_kv.store.writes import Writer

__all__ = ["SCRUB_CHUNK", "ScrubReport", "Scrubber"]

SCRUB_CHUNK = 64
"""Buckets checked per atomic step, so a full scrub never holds the commit lock for long."""
_MOD = 1 << 256


@dataclass(frozen=True, slots=True)
class ScrubReport:
    """What one :meth:`~crdt_kv.store.Store.scrub` found (and fixed).

    ``buckets`` and ``records`` count what was checked; ``missing`` index entries whose
    record was gone, ``corrupt`` records that did not parse (both rotten: removed and
    quarantined, ``quarantined`` keys in all), ``unindexed`` records that had lost their
    index entry (re-indexed), ``mismatched`` buckets whose kept fingerprint differed from
    the recomputation (set to it).
    """

    buckets: int = 0
    records: int = 0
    missing: int = 0
    corrupt: int = 0
    unindexed: int = 0
    mismatched: int = 0
    quarantined: int = 0

    @property
    def clean(self) -> bool:
        """True when nothing was wrong."""
        return not (self.missing or self.corrupt or self.unindexed or self.mismatched)

    def __add__(self, other: ScrubReport) -> ScrubReport:
        return ScrubReport(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(r: ScrubReport) -> tuple[int, ...]:
    return (
        r.buckets,
        r.records,
        r.missing,
        r.corrupt,
        r.unindexed,
        r.mismatched,
        r.quarantined,
    )


def _parses(k: bytes, blob: bytes) -> bool:
    try:
        unpack_record(k, blob)
    except CorruptionError:
        return False
    return True


def _runs(buckets: list[int]) -> list[list[int]]:
    """Sorted bucket numbers split into runs of adjacent ones."""
    runs: list[list[int]] = []
    for b in buckets:
        if runs and runs[-1][-1] == b - 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def check_buckets(buckets: Iterable[int] | None) -> list[int]:
    """The bucket numbers to scrub, sorted (None: every bucket); ValueError if not ints
    in ``[0, BUCKETS)``."""
    if buckets is None:
        return list(range(BUCKETS))
    out = sorted(set(buckets))
    for b in out:
        if type(b) is not int or not 0 <= b < BUCKETS:
            raise ValueError(f"scrub: bucket {b!r} is not in [0, {BUCKETS})")
    return out


class _Pass:
    """One step's findings, built under the lock before anything is written."""

    __slots__ = ("corrupt", "indexed", "missing", "records", "recount", "unindexed")

    def __init__(self) -> None:
        self.missing: list[bytes] = []
        self.corrupt: list[bytes] = []
        self.unindexed: list[tuple[bytes, bytes]] = []
        self.indexed: set[bytes] = set()
        self.recount: dict[int, tuple[int, int]] = {}
        self.records = 0


class Scrubber:
    """The scrub of one store: works through its writer, under the commit lock. Loads
    the quarantine into the writer at open."""

    __slots__ = ("_answers", "_backend", "_epoch", "_hold", "_since", "_w")

    def __init__(self, backend: Backend, writer: Writer) -> None:
        self._backend, self._w = backend, writer
        writer.quarantined.update(k[1:] for k, _ in backend.iterate(QUARANTINE, QUARANTINE_END))
        held = backend.get(META_QUARANTINE_HOLD)
        self._hold = 0 if held is None else unpack_u64(held)
        self._answers: dict[bytes, set[str]] = {}
        """Per quarantined key, the peers that answered for it (memory only: after a
        reopen they are asked again)."""
        self._epoch = 0
        """Counts scrubs that quarantined keys since open (see :attr:`epoch`)."""
        self._since: dict[bytes, int] = {}
        """The epoch in which a key entered quarantine since open (absent: before open)."""

    @property
    def epoch(self) -> int:
        """Grows whenever keys enter quarantine. A repair notes it when it lists the keys
        it probes; its answers then count only for keys quarantined no later than that
        (an answer given before a key's second loss says nothing of what it lost then)."""
        return self._epoch

    def hold(self) -> int | None:
        """While keys are quarantined, the most this replica may claim to hold of anyone's
        writes (a member's gossip, :meth:`crdt_kv.horizon.Membership.gossip`): the
        collection horizon when the first of them was lost. A lost record's stamp is
        unknown; below that horizon every member holds it (or a newer state), above it
        only the lost record may have, so peers that pull this replica must not take its
        word beyond it, or the horizon would pass the lost state and absence win for it."""
        return self._hold if self._w.quarantined else None

    def quarantined(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """``(position, key)`` of the quarantined keys in ``[lo, hi)``, sorted."""
        with self._w.lock:
            keys = list(self._w.quarantined)
        return sorted((p, k) for k in keys if lo <= (p := position(k)) < hi)

    def answered(
        self, peer: str, keys: Iterable[bytes], partners: Iterable[str], *, epoch: int
    ) -> int:
        """``peer`` answered in a repair for ``keys`` (keys quarantined no later than
        ``epoch``; others are ignored): it shipped its state, merged here, or holds none.
        Then :meth:`release` what ``partners`` have all answered for."""
        w = self._w
        with w.lock:
            w.check()
            q, answers, since = w.quarantined, self._answers, self._since
            for k in keys:
                if k in q and since.get(k, 0) <= epoch:
                    answers.setdefault(k, set()).add(peer)
            return self.release(partners)

    def release(self, partners: Iterable[str]) -> int:
        """Release the quarantined keys every one of ``partners`` (the active members that
        ever had a session with us) answered for: this replica then holds at least what
        each of them held when it answered (``spec/data-model.md`` section 20). Their
        buckets are scrubbed first, so a key whose merged record rotted again stays. Run
        again when the members change (a partner expired or was forgotten). Returns how
        many keys were released."""
        w = self._w
        with w.lock:
            w.check()
            q, answers = w.quarantined, self._answers
            for k in [k for k in answers if k not in q]:
                del answers[k]
            need = set(partners)
            if not need:  # nobody to vouch for it: keep it (absence must not win for it)
                return 0
            free = [k for k, said in answers.items() if need <= said]
            if free:
                self.scrub_keys(free)  # a key found rotten again loses its answers
                free = sorted(k for k in free if k in answers and k in q)
            if free:
                self._backend.write([(QUARANTINE + k, None) for k in free])
                q.difference_update(free)
                for k in free:
                    del answers[k]
                    self._since.pop(k, None)
                w.stats["released"] += len(free)
            return len(free)

    def wants_probe(self, peer: str) -> bool:
        """Whether a quarantined key awaits ``peer``'s answer (see :meth:`answered`). Asked
        on a node's event loop (a live link's timer): with nothing quarantined, the usual
        case, it answers without waiting for the commit lock a storage thread may hold."""
        if not self._w.quarantined:
            return False
        with self._w.lock:
            answers = self._answers
            return any(peer not in answers.get(k, ()) for k in self._w.quarantined)

    def scrub_keys(self, keys: Iterable[bytes]) -> ScrubReport:
        """Scrub the buckets of ``keys`` now: a write or merge found their records lost."""
        return self.scrub(sorted({position(k) >> BUCKET_SHIFT for k in keys}))

    def scrub(self, buckets: Iterable[int] | None) -> ScrubReport:
        """Check and fix the given buckets (None: all), :data:`SCRUB_CHUNK` at a time."""
        todo = check_buckets(buckets)
        report = ScrubReport()
        for i in range(0, len(todo), SCRUB_CHUNK):
            with self._w.lock:
                self._w.check()
                self._w.log.checkpoint()  # every record indexed on disk, buckets settled
                report += self._step(todo[i : i + SCRUB_CHUNK])
        w = self._w
        w.stats["scrubbed_buckets"] += report.buckets
        w.stats["rotten"] += report.missing + report.corrupt
        return report

    def _step(self, part: list[int]) -> ScrubReport:
        found = _Pass()
        for run in _runs(part):
            self._check_run(run, found)
        buckets = self._w.log.buckets
        wrong = {b for b, cs in found.recount.items() if cs != (buckets.counts[b], buckets.sums[b])}
        if not wrong:
            return ScrubReport(len(part), found.records)
        live = self._scan_records(wrong, found)
        self._fix(found, wrong, live)
        return ScrubReport(
            len(part),
            found.records,
            len(found.missing),
            len(found.corrupt),
            len(found.unindexed),
            len(wrong),
            len(found.missing) + len(found.corrupt),
        )

    def _check_run(self, run: list[int], found: _Pass) -> None:
        """Recount adjacent buckets ``run`` from their index entries and the records they
        name: one index scan and one read for the whole run (a bucket at a time cost a
        scan each, mostly of empty buckets)."""
        lo = index_bound(run[0] * BUCKET_WIDTH)
        hi = index_bound((run[-1] + 1) * BUCKET_WIDTH)
        entries = [
            (int.from_bytes(k[1:9], "big") >> BUCKET_SHIFT, k[9:])
            for k, _ in self._backend.iterate(lo, hi)
        ]
        blobs = self._backend.get_many([DATA + k for _, k in entries])
        sums = {b: [0, 0] for b in run}
        for (b, k), blob in zip(entries, blobs, strict=True):
            found.indexed.add(k)
            cs = sums.get(b)
            if blob is None or cs is None:  # cs None: an index key too short to name one
                found.missing.append(k)
            elif not _parses(k, blob):
                found.corrupt.append(k)
            else:
                cs[0] += 1
                cs[1] += body_hash(k, blob[:-8])
        found.records += len(entries)
        for b, (count, total) in sums.items():
            found.recount[b] = (count, total % _MOD)

    def _scan_records(self, wrong: set[int], found: _Pass) -> int:
        """One pass over every record (only when a bucket was wrong): re-index the records
        of ``wrong`` buckets that lost their index entry (or quarantine them if they do
        not parse) and recount the live keys. Returns the live count."""
        live = 0
        rotten = set(found.corrupt)
        for dk, blob in self._backend.iterate(DATA, DATA_END):
            k = dk[1:]
            if k in rotten:
                continue
            pb = position_bytes(k)
            b = int.from_bytes(pb, "big") >> BUCKET_SHIFT
            if b in wrong and k not in found.indexed:
                if not _parses(k, blob):
                    found.corrupt.append(k)
                    continue
                found.unindexed.append((k, pb))
                c, s = found.recount[b]
                found.recount[b] = (c + 1, (s + body_hash(k, blob[:-8])) % _MOD)
            if len(blob) > 1 and not record_is_deleted(blob):
                live += 1
        return live

    def _fix(self, found: _Pass, wrong: set[int], live: int) -> None:
        """Write the fixes and the new counters in one batch, then update memory."""
        w = self._w
        log, buckets = w.log, w.log.buckets
        ops = self._log_pass(wrong, found)
        rotten = found.missing + found.corrupt
        for k in found.corrupt:
            ops.append((DATA + k, None))
        for k in rotten:
            ops += [(INDEX + position_bytes(k) + k, None), (QUARANTINE + k, b"")]
        ops += [(INDEX + pb + k, b"") for k, pb in found.unindexed]
        fixes = {b: found.recount[b] for b in wrong}
        shift = sum(s - buckets.sums[b] for b, (_, s) in fixes.items())
        digest = (log.digest + shift) % _MOD
        ops += buckets.checkpoint_ops(log.seq, fixes=fixes)
        ops.append((META_GC, pack_gc_state(log.seq, live, digest, w.hlc.last)))
        hold = self._hold if w.quarantined else w.gc_horizon
        if rotten:
            ops.append((META_QUARANTINE_HOLD, pack_u64(hold)))
        self._backend.write(ops)
        log.digest, log.count = digest, live
        buckets.saved(fixes=fixes)
        w.quarantined.update(rotten)
        if rotten:
            self._epoch += 1
            self._hold = hold
        for k in rotten:
            self._answers.pop(k, None)
            self._since[k] = self._epoch

    def _log_pass(self, wrong: set[int], found: _Pass) -> list[Op]:
        """Deletions of the change-log entries of rotten keys (a lost record no longer
        says at which sequence it was logged), and, for the keys of ``wrong`` buckets, of
        entries naming a key that has no record (lost with its index entry: added to
        ``found.missing``) or a record at another sequence (left behind when a lost key
        was written again, which would name a missing record once it is collected)."""
        rotten = set(found.missing) | set(found.corrupt)
        ops: list[Op] = []
        named: list[tuple[bytes, bytes]] = []
        for lk, v in self._backend.iterate(LOG, LOG_END):
            k = unpack_log(v)[0]
            if k in rotten:
                ops.append((lk, None))
            elif bucket_of(position(k)) in wrong:
                named.append((lk, k))
        blobs = self._backend.get_many([DATA + k for _, k in named])
        for (lk, k), blob in zip(named, blobs, strict=True):
            if blob is None or blob[-8:] != lk[1:]:
                ops.append((lk, None))
            if blob is None and k not in rotten:
                rotten.add(k)
                found.missing.append(k)
        return ops
