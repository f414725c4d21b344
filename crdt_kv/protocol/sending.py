r"""Our sending side of a replication session: answering the peer's ``Request`` by
streaming our change log as ``Batch`` messages, at most ``window`` unacknowledged, and
taking its ``Ack`` messages. A base class of :class:`~crdt_kv.protocol.session.Session` (after
:class:`~crdt_kv.protocol.queue.StorageQueue`) so that module stays small; the session
owns the state and supplies the plumbing this side uses (:meth:`Sender._send`,
:meth:`Sender._fail`, ...).

Reading the log is a :class:`~crdt_kv.protocol.storage.ReadLog` storage request, one at
a time; its result comes back through the session's ``_finish`` to :meth:`Sender._send_batch`.
"""

from __future__ import annotations

from collections import deque

from crdt_kv.errors import LocalProtocolError, RemoteProtocolError
from crdt_kv.protocol.handshake import check_rollback
from crdt_kv.protocol.messages import (
    AbortCode,
    Ack,
    Batch,
    Hello,
    Request,
    encode_frame,
)
from crdt_kv.protocol.options import SessionStats
from crdt_kv.protocol.queue import SessionPart
from crdt_kv.protocol.states import (
    OUT_TABLE,
    AllAcked,
    HeadReached,
    HeadReachedLive,
    OutState,
    step,
)
from crdt_kv.protocol.storage import LogSlice, ReadLog, oversized_frame
from crdt_kv.protocol.verify import Checkup

__all__ = ["FIRST_BATCH_BYTES", "Sender"]

_O = OutState

FIRST_BATCH_BYTES = 1 << 16
"""Where our first batches of a session are cut (``max_batch_bytes`` if smaller); the cut
doubles with every Ack up to ``max_batch_bytes``. A peer that asks for our whole log and
never acknowledges (a slow or hostile reader) then costs a log read, an encode and outbox
memory of ``window`` x 64 KiB, not ``window`` x 1 MiB; a real peer acks within a round trip,
so a catch-up reaches full-size batches after about five of them."""


class Sender(SessionPart):
    """The sending-side handlers of a session; the state lives on the session."""

    live: bool
    window: int
    max_batch_entries: int
    max_batch_bytes: int
    _batch_bytes: int
    out_state: OutState
    remote: Hello | None
    stats: SessionStats
    _fix: Checkup
    _reading: ReadLog | None
    _unacked: deque[int]
    _out_pos: int
    _remote_live: bool
    _stop_at: int | None
    _echo: tuple[str, bytes] | None

    def _on_request(self, r: Request) -> None:
        self.out_state = step(OUT_TABLE, self.out_state, r, "our sending side")
        if self.remote is not None and r.live != self.remote.live:
            err = f"peer {self.remote.peer_id!r} sent Request live={r.live} after Hello live="
            return self._fail(RemoteProtocolError(f"{err}{self.remote.live}"), AbortCode.PROTOCOL)
        last = self.replica.last_seq
        rolled_back = check_rollback(self.replica, r, self.remote)
        if rolled_back is not None:
            return self._fail(rolled_back, AbortCode.ROLLED_BACK)
        self._out_pos = r.since
        # Our own ``live`` bounds how long we serve: a one-shot side never tails its log.
        self._remote_live = r.live and self.live
        # A one-shot pull gets the log as it was when asked; otherwise a busy writer would
        # keep moving the head and the sync would never complete.
        self._stop_at = None if self._remote_live else last
        if self._fix.on_request(r, last):
            self._out_pos = last  # after the repair the peer holds our state as of ``last``
            self._repair_progress()
        else:
            self._pump()
        return None

    def _pump(self) -> None:
        """Ask for the next batch while the window has room (one read at a time)."""
        while (
            self._reading is None
            and not self.closed
            and len(self._unacked) < self.window
            and self.out_state in (_O.STREAMING, _O.LIVE)
            and not self._fix.repairing
        ):
            if self.out_state is _O.LIVE and self._out_pos >= self.replica.last_seq:
                return
            remote = self.remote
            assert remote is not None
            self._reading = ReadLog(
                pos=self._out_pos,
                limit=min(self.max_batch_entries, remote.max_batch_entries),
                max_bytes=self._batch_bytes,
                stop_at=self._stop_at,
                exclude_source=self._echo,
                tail=self.out_state is _O.LIVE,
                frame_bytes=remote.max_frame_bytes,
            )
            self._submit(self._reading)

    def _send_batch(self, s: LogSlice) -> None:
        if s.done and self._stop_at is not None and s.to_seq < self._stop_at:
            s = LogSlice(s.entries, s.to_seq, False)  # the pinned head moved meanwhile
        batch = Batch(self._out_pos, s.to_seq, s.done, s.entries)
        frame, remote = encode_frame(batch), self.remote
        assert remote is not None
        too_big = oversized_frame(len(frame) - 4, s.entries, remote.peer_id, remote.max_frame_bytes)
        if too_big is not None:
            return self._fail(LocalProtocolError(too_big), AbortCode.REJECTED_DATA)
        self._send(batch, frame)
        self._unacked.append(s.to_seq)
        self._out_pos = s.to_seq
        self.stats.batches_sent += 1
        self.stats.entries_sent += len(s.entries)
        if s.done and self.out_state is _O.STREAMING:
            event = HeadReachedLive() if self._remote_live else HeadReached()
            self.out_state = step(OUT_TABLE, self.out_state, event, "our sending side")

    def _on_ack(self, a: Ack) -> None:
        self.out_state = step(OUT_TABLE, self.out_state, a, "our sending side")
        if not self._unacked or self._unacked[0] != a.seq:
            want = self._unacked[0] if self._unacked else None
            raise RemoteProtocolError(f"ack for {a.seq} does not match the oldest batch ({want})")
        self._unacked.popleft()
        self._batch_bytes = min(2 * self._batch_bytes, self.max_batch_bytes)
        if self.out_state is _O.DRAINING:
            if not self._unacked:
                self.out_state = step(OUT_TABLE, self.out_state, AllAcked(), "our sending side")
                self._check_complete()
        else:
            self._pump()

    # --- supplied by the session ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def _repair_progress(self) -> None:
        raise NotImplementedError
