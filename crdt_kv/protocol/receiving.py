"""Our receiving side of a replication session: taking the peer's ``Batch`` messages in
order, applying each with its cursor in one commit (an
:class:`~crdt_kv.protocol.storage.ApplyBatch` storage request), answering with ``Ack``,
and noting the first ``done`` batch for the collection horizon. A base class of
:class:`~crdt_kv.protocol.session.Session`, as :class:`~crdt_kv.protocol.sending.Sender`
is for the sending side; the session owns the state and supplies the plumbing.
"""

from __future__ import annotations

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.protocol.events import BatchApplied, Event
from crdt_kv.protocol.messages import AbortCode, Ack, Batch, Hello
from crdt_kv.protocol.options import SessionStats
from crdt_kv.protocol.queue import SessionPart
from crdt_kv.protocol.states import IN_TABLE, FinalBatch, InState, OutState, TailBatch, step
from crdt_kv.protocol.storage import ApplyBatch, oversized_entry
from crdt_kv.protocol.verify import Checkup

__all__ = ["ROW_OBJECT_BYTES", "Receiver"]

_O = OutState
ROW_OBJECT_BYTES = 200
"""What a decoded row costs in objects beyond its bytes, about (see
:attr:`~crdt_kv.protocol.session.Session.held_bytes`)."""


class Receiver(SessionPart):
    """The receiving-side handlers of a session; the state lives on the session."""

    live: bool
    in_state: InState
    out_state: OutState
    remote: Hello | None
    stats: SessionStats
    _fix: Checkup
    _in_pos: int
    _remote_head: int
    _frame_bytes: int
    _applying: tuple[ApplyBatch, Batch] | None
    _applying_bytes: int
    _stop_at: int | None
    _pulled: bool
    _events: list[Event]

    def _on_batch(self, b: Batch) -> None:
        self.in_state = step(IN_TABLE, self.in_state, b, "our receiving side")
        remote = self.remote
        assert remote is not None
        if self._fix.repairing:
            raise RemoteProtocolError(f"batch from {remote.peer_id!r} during a repair")
        rebase = self._fix.rebase and b.from_seq >= self._in_pos
        if rebase:  # the first batch after a first-contact repair: our cursor moves up
            self._fix.rebase = False
            self._in_pos = b.from_seq
        if b.from_seq != self._in_pos:
            raise RemoteProtocolError(
                f"batch from {remote.peer_id!r} starts at {b.from_seq}, "
                f"but our cursor is at {self._in_pos}"
            )
        too_big = oversized_entry(b.entries, remote.peer_id)
        if too_big is not None:  # the store enforces these limits on local writes only
            return self._fail(RemoteProtocolError(too_big), AbortCode.REJECTED_DATA)
        if b.to_seq > b.from_seq or b.entries or rebase:
            request = ApplyBatch(b.entries, (remote.peer_id, remote.incarnation, b.to_seq))
            self._applying = (request, b)
            objects = len(b.entries) + sum(
                len(e.others) + len(e.context) for e in b.entries if e.others or e.context
            )
            self._applying_bytes = 2 * self._frame_bytes + ROW_OBJECT_BYTES * objects
            self._submit(request)
        else:
            self._after_apply(b, 0)
        return None

    def _after_apply(self, b: Batch, changed: int) -> None:
        remote = self.remote
        assert remote is not None
        self._in_pos = b.to_seq
        self._remote_head = max(self._remote_head, b.to_seq)
        self.stats.batches_received += 1
        self.stats.entries_received += len(b.entries)
        self.stats.entries_changed += changed
        self._send(Ack(b.to_seq))
        if (
            changed
            and self._stop_at is not None
            and self.out_state is _O.STREAMING
            and self.replica.conflict_mode == "siblings"
        ):
            # A siblings-mode apply may rewrite a key we have not sent yet with a state
            # that keeps our version: it moves past the pinned head, so the pin follows
            # (bounded: it moves only while the peer's finite log is being applied).
            self._stop_at = max(self._stop_at, self.replica.last_seq)
        if b.done and not self._pulled:
            self._pulled = True
            self.replica.membership.pulled(remote.peer_id, remote.hlc, remote.gc)
        if b.done:
            # The sender tails its log only if both sides asked for live (see _on_request).
            event = TailBatch() if self.live and remote.live else FinalBatch()
            self.in_state = step(IN_TABLE, self.in_state, event, "our receiving side")
        self._events.append(BatchApplied(len(b.entries), changed, b.from_seq, b.to_seq, b.done))
        self._check_complete()
