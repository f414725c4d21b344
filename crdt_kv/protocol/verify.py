"""Verification and repair inside a replication session (``spec/protocol.md`` section 13).

Two cases make a session run the range-fingerprint reconciliation of
:mod:`crdt_kv.repair` over its own connection, each end driving one
:class:`~crdt_kv.repair.machine.Reconciler` whose bytes travel as :class:`Repair`
messages and whose storage work goes through the session's storage requests
(:class:`~crdt_kv.protocol.storage.RepairWork`):

- **first contact**: our receiving side has no cursor for the peer's incarnation and both
  Hellos show data. Pulling the peer's whole log would ship every key; instead the Request
  asks for a repair, and after it each side streams its log from its head at the time it
  received the peer's Request (the receiver takes the first batch's ``from_seq`` as its
  cursor, stored with that batch, so a crash never leaves a cursor ahead of the data).
- **verification**: when both directions of a one-shot round finished, each side sends
  :class:`Verify`: its digest and whether it is *clean* (since it pinned its head for the
  session, its store changed only through this session's applies: every applied change
  takes exactly one log sequence, so ``last_seq == pin + changes``). Both clean with
  different digests is a divergence: counted, reported, and repaired at once.
- **probing**: a side whose quarantine holds a key the peer has not answered for
  (:meth:`~crdt_kv.protocol.replica.Replica.wants_probe`) sets ``probe`` in its Verify,
  and both repair so that the peer says whether it holds the key. Once the peer answered
  for every key (or sent its state) the side stops asking: at most one such repair per
  session, and none once the quarantine is settled with that peer.

Either case needs both Hellos to offer repair and both directions enabled, facts both
sides know alike, so they always agree on what follows. A session repairs at most once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.protocol.events import DivergenceFound, Event, RepairFinished
from crdt_kv.protocol.messages import MAX_REPAIR_PAYLOAD, Hello, Message, Repair, Request, Verify
from crdt_kv.protocol.options import SessionStats
from crdt_kv.protocol.replica import Replica
from crdt_kv.protocol.storage import RepairWork, StorageRequest
from crdt_kv.repair.machine import Reconciler
from crdt_kv.repair.report import ReconcileReport

__all__ = ["Checkup"]


class Checkup:
    """The verify/repair part of one :class:`~crdt_kv.protocol.session.Session`.

    ``io`` is the session's ``(send, submit, emit)``: queue a message for the peer, hand
    a storage request to the session (performed inline or by the driver, its result
    coming back through :meth:`work_done`), report an event. ``enabled``: our Hello
    offers repair. Counters go to the session's ``stats``.
    """

    def __init__(
        self,
        replica: Replica,
        *,
        enabled: bool,
        stats: SessionStats,
        io: tuple[
            Callable[[Message], None], Callable[[StorageRequest], None], Callable[[Event], None]
        ],
    ) -> None:
        self.replica = replica
        self.enabled = enabled
        self.stats = stats
        self._send, self._submit, self._emit = io
        self.peer = "peer"
        self.agreed = False
        """Both Hellos offered repair and data flows both ways."""
        self.wanted = False
        """Our Request asked for a first-contact repair."""
        self.pin: int | None = None
        self.ours: Verify | None = None
        self.theirs: Verify | None = None
        self.reconciler: Reconciler | None = None
        self.first_contact = False
        self.report: ReconcileReport | None = None
        self.rebase = False
        """The peer's next batch may start above our cursor (after a first-contact repair)."""
        self.work: RepairWork | None = None
        self.cursor: tuple[str, bytes, int] | None = None
        """Our cursor for the peer: repair merges store it again (see ``RepairWork``)."""
        self.reported = False

    # --- state ----------------------------------------------------------------------------

    @property
    def repairing(self) -> bool:
        """A reconciliation is running."""
        return self.reconciler is not None

    @property
    def pending(self) -> bool:
        """Verification or repair is under way: the session is not complete yet."""
        return self.repairing or (self.ours is not None and self.theirs is None)

    # --- the handshake --------------------------------------------------------------------

    def on_hello(self, h: Hello, *, both_ways: bool, cursor: int, our_seq: int) -> bool:
        """The peer's Hello was accepted; returns whether our Request asks for a repair."""
        self.peer = h.peer_id
        self.cursor = (h.peer_id, h.incarnation, cursor)
        self.agreed = self.enabled and h.repair and both_ways
        self.wanted = self.agreed and cursor == 0 and h.last_seq > 0 and our_seq > 0
        return self.wanted

    def on_request(self, r: Request, last_seq: int) -> bool:
        """The peer's Request arrived while our head is ``last_seq`` (our pin); returns
        whether a first-contact repair starts (our log then streams from ``last_seq``)."""
        if r.repair and not self.agreed:
            raise RemoteProtocolError("the peer asked for a repair the Hellos did not agree on")
        self.pin = last_seq
        if self.agreed and (r.repair or self.wanted):
            self._start(first_contact=True)
            return True
        return False

    # --- verification ---------------------------------------------------------------------

    def verify(self, changes: int, cursor: int) -> bool:
        """Both directions finished (our cursor for the peer is now ``cursor``): send our
        Verify if the session verifies; returns whether it did (the session then waits for
        the peer's)."""
        if not self.agreed or self.pin is None or self.report is not None or self.ours is not None:
            return False
        if self.cursor is not None:
            self.cursor = (*self.cursor[:2], cursor)
        replica = self.replica
        before = replica.last_seq
        digest = replica.digest()
        clean = before == replica.last_seq == self.pin + changes
        self.ours = Verify(digest, clean, replica.wants_probe(self.peer))
        self._send(self.ours)
        return True

    def on_message(self, m: Verify | Repair) -> None:
        """A Verify or Repair message of the peer (then call :meth:`progress`)."""
        if isinstance(m, Repair):
            rec = self.reconciler
            if rec is None:
                raise RemoteProtocolError("unexpected Repair: no repair is running")
            rec.receive_data(m.payload)
            self.step()
            return
        if self.ours is None or self.theirs is not None:
            raise RemoteProtocolError("unexpected Verify: this side has not finished the round")
        self.theirs = m
        ours = self.ours
        if ours.clean and m.clean and ours.digest != m.digest:
            self.stats.divergences += 1
            self._emit(DivergenceFound(self.peer))
            self._start(first_contact=False)
        elif ours.probe or m.probe:
            self._start(first_contact=False)

    def progress(self) -> Literal["stream", "complete"] | None:
        """What the session does next: ``stream`` its log (a first-contact repair just
        finished), ``complete`` (verified, or repaired after a divergence), or nothing."""
        rep = self.report
        if rep is not None and not self.reported:
            self.reported = True
            self.stats.repairs += 1
            self.stats.repair_entries += rep.changed
            self._emit(
                RepairFinished(
                    self.peer, self.first_contact, rep.changed, rep.dropped, rep.round_trips
                )
            )
            if self.first_contact:
                return "stream"
        if not self.pending and not self.first_contact and self.theirs is not None:
            return "complete"
        return None

    # --- the reconciliation ---------------------------------------------------------------

    def _start(self, *, first_contact: bool) -> None:
        self.first_contact = first_contact
        self.reconciler = Reconciler()
        self.reconciler.start()
        self.step()

    def work_done(self, result: object, *, step: bool) -> None:
        """The storage work handed out finished with ``result``; ``step``: go on at once
        (the session performs work inline in a loop of its own otherwise)."""
        rec = self.reconciler
        self.work = None
        if rec is not None:
            rec.storage_done(result)
            if step:
                self.step()

    def step(self) -> None:
        """Send what the reconciler has to say and hand out its next storage work, until it
        waits for the peer or for storage, or finishes (:attr:`report` is then set)."""
        while (rec := self.reconciler) is not None and self.work is None:
            out = rec.data_to_send()
            for i in range(0, len(out), MAX_REPAIR_PAYLOAD):
                self._send(Repair(out[i : i + MAX_REPAIR_PAYLOAD]))
            if rec.finished:
                self.report = rec.report
                self.reconciler = None
                self.rebase = self.first_contact
                return
            work = rec.storage_request()
            if work is None:
                return
            self.work = RepairWork(work, self.cursor)
            self._submit(self.work)

    def failed(self) -> None:
        """The storage work raised: the session fails, the reconciliation is over."""
        self.work = None
        self.reconciler = None
