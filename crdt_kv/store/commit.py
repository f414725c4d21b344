"""The commit builder: the one code path every write takes (local put and delete, batch
commit, remote apply).

A commit replaces some keys' records. For each it writes the new record at the next local
sequence and its change-log entry, and removes the key's previous log entry (so the log
stays one entry per key). The last log entry of the commit carries the trailer: live
count, digest and HLC high-water mark, which reopening reads back in O(1). A key's first
record will have a position index entry (``x``): the commit only notes each changed key
for the bucket fingerprints, which keep the new keys' index entries and are saved at
checkpoints (:mod:`crdt_kv.store.buckets`). Extra ops (the remote cursor)
ride in the same atomic backend batch. After the write, the commit is counted and the
listeners are told.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from crdt_kv.accel import stage_records
from crdt_kv.backends.base import Op
from crdt_kv.layout import DATA, log_prefix, stage_record, trailer_log
from crdt_kv.store.buckets import Buckets, Note
from crdt_kv.store.hooks import Hooks

__all__ = ["Change", "Committer"]

Change = tuple[bytes, bytes, bytes | None]
"""One key's replacement in a commit: ``(key, new record body, old record or None)``."""

_MOD = 1 << 256
_LOCAL = log_prefix(0)


class Committer:
    """Owns the commit counters and turns changes into one atomic backend batch.

    ``seq`` (last local sequence), ``count`` (live keys), ``digest`` (sum of every key's
    body hash, mod 2**256) and the bucket fingerprints change only after the backend
    accepted the batch, so a failed write leaves them, and the store, exactly as they were.
    Not locked itself: the store's writer calls it with the commit lock held.
    """

    __slots__ = (
        "_hooks",
        "_notes",
        "_stats",
        "_write",
        "buckets",
        "count",
        "digest",
        "history",
        "seq",
    )

    def __init__(  # noqa: PLR0917 - private; built once by the store
        self,
        write: Callable[[Sequence[Op]], None],
        hooks: Hooks,
        stats: dict[str, int],
        seq: int,
        count: int,
        digest: int,
        buckets: Buckets,
    ) -> None:
        self._write, self._hooks, self._stats = write, hooks, stats
        self.seq, self.count, self.digest = seq, count, digest
        self.buckets = buckets
        self._notes = buckets.notes
        self.history: Callable[[bytes, bytes, bytes | None], list[Op]] | None = None
        """``keep_history``: the revision ops each change adds to its commit."""

    def commit(
        self,
        items: Sequence[Change],
        hlc: int,
        source: int = 0,
        extra: Sequence[Op] = (),
        mixed: frozenset[bytes] = frozenset(),
    ) -> None:
        """Write ``items`` (at least one) plus ``extra`` atomically, then notify listeners.

        ``hlc`` is the clock's high-water mark for the trailer; ``source`` (0 = local) the
        source id of the peer incarnation the items were applied from, except for the keys
        in ``mixed``: their new state joins remote and local versions, so the source does
        not hold it and they are logged as local changes (to be sent back). Raises
        :class:`CorruptionError` for a malformed old record before anything is written.
        """
        seq, count, digest = self.seq, self.count, self.digest
        ops: list[Op] = []
        add = ops.append
        logs: list[tuple[bytes, bytes]] = []
        notes: list[Note] = []
        if self.history is None:
            seq, digest_delta, count_delta = stage_records(items, seq, ops, logs, notes)
            digest += digest_delta
            count += count_delta
        else:
            for k, body, old in items:
                seq += 1
                old_log, record, lk, digest_delta, count_delta = stage_record(k, body, old, seq)
                notes.append((k, digest_delta, old_log is None))
                if old_log is not None:
                    add((old_log, None))
                digest += digest_delta
                count += count_delta
                add((DATA + k, record))
                logs.append((lk, k))
                ops.extend(self.history(k, body, old))
        digest %= _MOD
        last_lk, last_k = logs.pop()
        if logs:
            prefix = log_prefix(source)
            if mixed:
                ops.extend([(lk, (_LOCAL if k in mixed else prefix) + k) for lk, k in logs])
            else:
                ops.extend([(lk, prefix + k) for lk, k in logs])
        last_source = 0 if last_k in mixed else source
        add((last_lk, trailer_log(last_k, count, digest, hlc, last_source)))
        buckets = self.buckets
        save = len(self._notes) + len(notes) >= buckets.room
        if save:
            ops.extend(buckets.checkpoint_ops(seq, notes))
        if extra:
            ops.extend(extra)
        self._write(ops)
        first = self.seq + 1
        self.seq, self.count, self.digest = seq, count, digest
        if save:
            buckets.saved(notes)
        else:
            self._notes.extend(notes)
        self._stats["commits"] += 1
        hooks = self._hooks
        if hooks.commit or hooks.change:
            hooks.notify(items, first, seq)

    def commit_one(self, k: bytes, body: bytes, old: bytes | None, hlc: int) -> None:
        """:meth:`commit` of one local change with no extra ops, unrolled: every local put
        and delete takes this path. Writes the same operations in the same order."""
        notes = self._notes
        if len(notes) + 1 >= self.buckets.room:
            self.commit(((k, body, old),), hlc)  # with a checkpoint
            return
        seq = self.seq + 1
        old_log, record, lk, delta, live = stage_record(k, body, old, seq)
        count = self.count + live
        digest = (self.digest + delta) % _MOD
        last = (lk, trailer_log(k, count, digest, hlc, 0))
        if self.history is not None:
            ops: list[Op] = [] if old_log is None else [(old_log, None)]
            self._write([*ops, (DATA + k, record), last, *self.history(k, body, old)])
        elif old_log is None:
            self._write([(DATA + k, record), last])
        else:
            self._write([(old_log, None), (DATA + k, record), last])
        self.seq, self.count, self.digest = seq, count, digest
        notes.append((k, delta, old_log is None))
        self._stats["commits"] += 1
        hooks = self._hooks
        if hooks.commit or hooks.change:
            hooks.notify(((k, body, old),), seq, seq)

    def checkpoint(self) -> bool:
        """Save the bucket fingerprints and the new keys' index entries if anything changed
        since the last checkpoint (one write); True if it wrote. Memory changes only after
        the write succeeded."""
        buckets = self.buckets
        buckets.settle()
        if not buckets.changed:
            return False
        self._write(buckets.checkpoint_ops(self.seq))
        buckets.saved()
        return True
