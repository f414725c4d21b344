"""Fuzz targets for the stateful receivers of peers' bytes: a replication session that
accepted a valid Hello, and a range-fingerprint reconciliation.

:func:`fuzz_session` sets up, from three header bytes, a memory store copied from a fixed
template and a :class:`~crdt_kv.protocol.link.PeerLink` (the production policy, so its
handshake, idle and keep-alive timers run too) serving one connection; it delivers a valid
Hello of a real peer and then the rest of the input, in deliveries, with time moving on,
performing storage work inline or deferred as the node does, and decoding every byte the
session sends. :func:`fuzz_reconcile` does the same for a bare
:class:`~crdt_kv.repair.machine.Reconciler`.

A finding is any exception escaping, a failure of the session other than the documented
peer faults (:data:`PEER_FAULTS`), or an :class:`OracleError`: we sent a frame the peer
must refuse, or a timer stays due. Everything is deterministic: the stores run on a
:class:`~crdt_kv.testing.ManualClock` and a seeded ``random.Random``, the link on the time
the harness moves. The templates are built once per process.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import crdt_kv
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.errors import (
    ClockSkewError,
    EncodingError,
    ProtocolError,
    RemoteProtocolError,
    RolledBackError,
)
from crdt_kv.protocol.events import LinkFailed
from crdt_kv.protocol.framing import HELLO_MAX_FRAME_BYTES, MIN_MAX_FRAME_BYTES, FrameDecoder
from crdt_kv.protocol.link import LinkState, PeerLink
from crdt_kv.protocol.linkconfig import LinkConfig
from crdt_kv.protocol.messages import DEFAULT_MAX_FRAME_BYTES, decode_message
from crdt_kv.protocol.session import Session
from crdt_kv.repair.machine import Reconciler
from crdt_kv.repair.messages import decode_message_bytes
from crdt_kv.store import Store
from crdt_kv.testing.clocks import DEFAULT_START_MS, ManualClock
from crdt_kv.testing.fuzz_decoders import CHUNK_SIZES, OracleError, chunks

__all__ = [
    "PEER_FAULTS",
    "SessionCase",
    "SessionHarness",
    "fuzz_reconcile",
    "fuzz_session",
    "open_template",
    "peer_session",
    "peer_store",
]

PEER_FAULTS = (RemoteProtocolError, ClockSkewError, RolledBackError)
"""What a session may fail with on hostile input (with a plain :class:`ProtocolError`:
the peer's Abort): anything else it fails with is a finding."""
RECONCILE_FAULTS = (RemoteProtocolError, ClockSkewError, EncodingError)
"""What a reconciliation may raise on hostile input (the last two from merging)."""
START_MS = DEFAULT_START_MS + 60_000
"""The wall clock at which every input starts (the templates were written before)."""
_STEPS = (0.01, 1.0, 7.0, 45.0)
_MODES = ("both", "push", "pull", "both")
_BATCH = (1000, 1, 3, 16)
_WINDOW = (4, 1, 2, 8)
_LOCAL_WRITES = 8
_MAX_TIMER_ROUNDS = 64


class _Disk(MemoryBackend):
    """A memory backend that starts as a copy of another's contents."""

    @classmethod
    def copy_of(cls, other: MemoryBackend) -> _Disk:
        disk = cls()
        disk._data = other._data.copy()
        return disk


def _open(
    disk: MemoryBackend, clock: ManualClock, peer: str | None = None, conflicts: str | None = None
) -> Store:
    return crdt_kv.open(
        backend=disk, peer_id=peer, clock=clock, rng=random.Random(peer), conflicts=conflicts
    )


def _pump(a: Session, b: Session) -> None:
    a.start()
    b.start()
    for _ in range(10_000):
        ab, ba = a.data_to_send(), b.data_to_send()
        if not ab and not ba:
            return
        b.receive_data(ab)
        a.receive_data(ba)
    raise OracleError("template sessions did not go quiet")


@functools.cache
def _templates(conflicts: str) -> tuple[MemoryBackend, MemoryBackend, MemoryBackend]:
    """Our store ``b``, the peer ``a`` and an empty peer ``e``: ``a`` and ``b`` each wrote
    keys of their own and the same three keys, ``b`` also synced with a third replica that
    wrote those three (siblings in that mode), so ``a`` and ``b`` meet for the first time
    with overlapping, conflicting data. Small: each input opens a copy."""
    clock = ManualClock(DEFAULT_START_MS)
    disks = {p: MemoryBackend() for p in "abce"}
    stores = {p: _open(d, clock, p, conflicts) for p, d in disks.items()}
    a, b, c = stores["a"], stores["b"], stores["c"]
    for i in range(4):
        a.put(f"a{i}", {"n": i})
        b.put(f"b{i}", [i, "x" * i])
    for s in (a, b, c):
        clock.advance(1)
        for i in range(3):
            s.put(f"s{i}", s.peer_id)
    a.delete("a1")
    b.delete("b2")
    clock.advance(1)
    _pump(Session(b), Session(c))
    clock.advance(1)
    a.put("a-late", b"\x00" * 300)
    for s in stores.values():
        s.close()
    return disks["b"], disks["a"], disks["e"]


def open_template(conflicts: str, which: str, clock: ManualClock) -> Store:
    """A fresh copy of a template store (``conflicts`` mode): ``"ours"`` (peer ``b``, the
    one the harnesses serve), ``"peer"`` (peer ``a``) or ``"empty"`` (an empty one)."""
    ours, peer, empty = _templates(conflicts)
    disk = {"ours": ours, "peer": peer, "empty": empty}[which]
    return _open(_Disk.copy_of(disk), clock)


@dataclass(frozen=True, slots=True)
class SessionCase:
    """What one input of :func:`fuzz_session` sets up, read from its three header bytes."""

    siblings: bool
    live: bool
    peer_live: bool
    peer_repair: bool
    defer: bool
    chunk: int
    peer_mode: str
    peer_empty: bool
    local_writes: bool
    step: float
    mode: str
    repair: bool
    peer_small_frames: bool
    max_batch_entries: int
    window: int

    @classmethod
    def parse(cls, head: bytes) -> SessionCase:
        """From three bytes (missing ones read as zero)."""
        h0, h1, h2 = (*head[:3], 0, 0, 0)[:3]
        return cls(
            siblings=bool(h0 & 1),
            live=bool(h0 & 2),
            peer_live=bool(h0 & 4),
            peer_repair=bool(h0 & 8),
            defer=bool(h0 & 16),
            chunk=CHUNK_SIZES[h0 >> 5],
            peer_mode=_MODES[h1 & 3],
            peer_empty=bool(h1 & 4),
            local_writes=bool(h1 & 8),
            step=_STEPS[(h1 >> 4) & 3],
            mode=_MODES[h1 >> 6],
            repair=not h2 & 1,
            peer_small_frames=bool(h2 & 2),
            max_batch_entries=_BATCH[(h2 >> 2) & 3],
            window=_WINDOW[(h2 >> 4) & 3],
        )

    @property
    def conflicts(self) -> str:
        """The conflict mode of both stores."""
        return "siblings" if self.siblings else "lww"


def peer_store(case: SessionCase) -> Store:
    """A fresh copy of the template of the peer ``case`` describes."""
    which = "empty" if case.peer_empty else "peer"
    return open_template(case.conflicts, which, ManualClock(START_MS))


def peer_session(case: SessionCase, store: Store) -> Session:
    """The real session of the peer ``case`` describes, on ``store`` (from
    :func:`peer_store`); the harness delivers its Hello, and the corpus generator records
    what it sends after that."""
    return Session(
        store,
        mode=case.peer_mode,
        live=case.peer_live,
        repair=case.peer_repair,
        max_frame_bytes=MIN_MAX_FRAME_BYTES if case.peer_small_frames else DEFAULT_MAX_FRAME_BYTES,
    )


_HELLOS: dict[tuple[object, ...], bytes] = {}


def _peer_hello(case: SessionCase) -> bytes:
    """The Hello frame of the peer ``case`` describes (cached by what it depends on)."""
    c = case
    key = (c.siblings, c.peer_mode, c.peer_live, c.peer_repair, c.peer_empty, c.peer_small_frames)
    hello = _HELLOS.get(key)
    if hello is None:
        hello = _HELLOS[key] = _hello_of(case)
    return hello


def _hello_of(case: SessionCase) -> bytes:
    store = peer_store(case)
    s = peer_session(case, store)
    s.start()
    hello = s.data_to_send()
    store.close()
    return hello


def _allowed(error: BaseException | None) -> bool:
    return error is None or isinstance(error, PEER_FAULTS) or type(error) is ProtocolError


class SessionHarness:
    """Our store ``b`` and a link serving one connection from peer ``a``, which already
    sent its (valid) Hello; :meth:`deliver` hands it the peer's next bytes."""

    def __init__(self, case: SessionCase) -> None:
        self.case = case
        self.clock = ManualClock(START_MS)
        self.store = open_template(case.conflicts, "ours", self.clock)
        config = LinkConfig(
            mode=case.mode,
            live=case.live,
            repair=case.repair,
            max_batch_entries=case.max_batch_entries,
            window=case.window,
        )
        self.now = 0.0
        self.link = PeerLink(
            self.store,
            role="once",
            config=config,
            rng=random.Random(0),
            now=0.0,
            defer_storage=case.defer,
        )
        self.sent: list[bytes] = []
        """Every frame payload we sent."""
        self._outgoing: list[bytes] = []
        self._out = FrameDecoder(max_frame_bytes=HELLO_MAX_FRAME_BYTES)
        self._peer_frame_bytes = MIN_MAX_FRAME_BYTES if case.peer_small_frames else None
        self._writes = 0
        self.link.connection_made(0.0)
        self.deliver(_peer_hello(case))

    @property
    def open(self) -> bool:
        """The connection still takes bytes."""
        return self.link.state is LinkState.CONNECTED

    def take_output(self) -> bytes:
        """What we sent since the last call (already checked)."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def deliver(self, data: bytes) -> None:
        """One delivery of the peer's bytes, ``case.step`` seconds after the previous one."""
        self._advance(self.case.step)
        self.link.receive_data(data, self.now)
        if self.case.local_writes and self._writes < _LOCAL_WRITES and self.open:
            self._writes += 1
            self.store.put(f"w{self._writes}", self._writes)
            self.link.local_changed(self.now)
        self._settle()

    def finish(self) -> None:
        """Let every timer run out, end the stream and the connection, close the store;
        raises if the session failed with anything but a peer fault."""
        self._advance(1000.0)
        if self.open:
            self.link.receive_data(b"", self.now)
            self._settle()
        self.link.connection_lost(self.now)
        self._check_events()
        self.store.close()
        if not _allowed(self.link.error):
            raise OracleError(f"the session failed with {self.link.error!r}") from self.link.error

    def _advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, each timer firing at its due time on the way, as
        for a driver that sleeps until ``get_timer()``."""
        end = self.now + seconds
        while (timer := self.link.get_timer()) is not None and timer <= end:
            self._set_now(max(self.now, timer))
            self._settle()
        self._set_now(end)

    def _set_now(self, now: float) -> None:
        self.now = now
        self.clock.set(START_MS + round(now * 1000))

    def _settle(self) -> None:
        """Perform the storage work, check what we send, fire the timers due by now."""
        link = self.link
        for _ in range(_MAX_TIMER_ROUNDS):
            while (request := link.storage_request()) is not None:
                try:
                    result = request.perform(self.store)
                except Exception as exc:  # the link decides whose fault it is
                    link.storage_failed(request, exc, self.now)
                else:
                    link.storage_done(request, result, self.now)
            self._check_output(link.data_to_send())
            self._check_events()
            timer = link.get_timer()
            if timer is None or timer > self.now:
                return
            link.handle_timer(self.now)
        raise OracleError(f"a timer stays due at {self.now} s ({link!r})")

    def _check_output(self, data: bytes) -> None:
        """Everything we send must pass the peer's checks: frames within its limits, each
        a message it accepts (batches within its ``max_batch_entries``)."""
        if not data:
            return
        self._outgoing.append(data)
        remote = self.link.session.remote if self.link.session is not None else None
        try:
            for payload in self._out.feed(data):
                decode_message(
                    payload, max_batch_entries=remote.max_batch_entries if remote else None
                )
                self.sent.append(payload)
                self._out.max_frame_bytes = self._peer_frame_bytes or DEFAULT_MAX_FRAME_BYTES
        except RemoteProtocolError as exc:
            raise OracleError(f"we sent a frame the peer must refuse: {exc}") from exc

    def _check_events(self) -> None:
        for ev in self.link.events():
            if isinstance(ev, LinkFailed) and not _allowed(ev.error):
                raise OracleError(f"the session failed with {ev.error!r}") from ev.error


def fuzz_session(data: bytes) -> None:
    """A session that accepted a valid Hello, fed ``data[3:]`` (see the module doc;
    ``data[:3]`` is read by :meth:`SessionCase.parse`)."""
    case = SessionCase.parse(data[:3])
    h = SessionHarness(case)
    for part in chunks(data[3:], case.chunk):
        if not h.open:
            break
        h.deliver(part)
    h.finish()


def fuzz_reconcile(data: bytes) -> None:
    """A reconciliation of our template store fed ``data[1:]`` after its start, storage
    work performed inline; ``data[0]``: bit 0 the conflict mode, bits 1-3 the delivery
    size, bit 4 an item threshold of 1. It may raise only :data:`RECONCILE_FAULTS`, and
    must send only frames that decode."""
    head = data[0] if data else 0
    store = open_template("siblings" if head & 1 else "lww", "ours", ManualClock(START_MS))
    rec = Reconciler(item_threshold=1 if head & 16 else 16)
    out = FrameDecoder(max_frame_bytes=DEFAULT_MAX_FRAME_BYTES)
    try:
        rec.start()
        for part in [b"", *chunks(data[1:], CHUNK_SIZES[(head >> 1) & 7])]:
            if part:
                rec.receive_data(part)
            while (work := rec.storage_request()) is not None:
                rec.storage_done(work.perform(store))
            for payload in out.feed(rec.data_to_send()):
                try:
                    decode_message_bytes(payload)
                except RemoteProtocolError as exc:
                    why = f"we sent a repair frame the peer must refuse: {exc}"
                    raise OracleError(why) from exc
    except RECONCILE_FAULTS:
        pass
    finally:
        store.close()
