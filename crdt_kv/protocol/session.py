"""The replication session: a pure state machine over one ordered, reliable byte stream.

Both ends run the same :class:`Session`. Feed it the bytes you received
(:meth:`Session.receive_data`, ``b""`` for end of stream); it applies what they carry to
the store and returns :class:`Event` objects; take the bytes it wants sent from
:meth:`Session.data_to_send`. It never touches sockets, sleeps or reads the time, so the
trio shell (``crdt_kv.net``) and the deterministic simulator (``crdt_kv.sim``) drive the
very same object.

Protocol outline (normative text in ``spec/protocol.md``): each side sends ``Hello``; a
side that wants the other's data (mode ``both``/``pull``) sends ``Request(since=cursor)``;
the other streams its compact change log as ``Batch`` messages of bounded size, at most
``window`` unacknowledged at a time; each batch is applied together with its cursor in one
atomic commit and answered with ``Ack``. A batch with ``done`` reached the sender's head.
Without ``live`` a direction ends when the final batch is acknowledged, and the session is
complete when both directions ended; with ``live`` the sender keeps streaming new commits
(:meth:`Session.local_changed`). Any violation sends ``Abort`` and fails the session;
nothing of a bad message is applied.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Literal, TypeVar

from crdt_kv.codec import MAX_KEY_BYTES, MAX_VALUE_BYTES
from crdt_kv.errors import (
    ClockSkewError,
    ConfigError,
    CrdtKvError,
    EncodingError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from crdt_kv.protocol.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Abort,
    AbortCode,
    Ack,
    Batch,
    FrameDecoder,
    Hello,
    Message,
    Request,
    decode_message,
    encode_frame,
)
from crdt_kv.store import Store
from crdt_kv.version import RawEntry

__all__ = [
    "MODES",
    "BatchApplied",
    "ConnState",
    "Connected",
    "ConnectionClosed",
    "Event",
    "InState",
    "OutState",
    "Session",
    "SessionFailed",
    "SessionStats",
    "SyncComplete",
]

Mode = Literal["both", "push", "pull"]
MODES: tuple[str, ...] = ("both", "push", "pull")


# --- events returned to the shell ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The peer's ``Hello`` was accepted."""

    peer_id: str
    incarnation: bytes
    cluster_id: str
    remote_last_seq: int
    cursor: int


@dataclass(frozen=True, slots=True)
class BatchApplied:
    """A batch from the peer was applied; ``changed`` entries altered our state."""

    received: int
    changed: int
    from_seq: int
    to_seq: int
    caught_up: bool


@dataclass(frozen=True, slots=True)
class SyncComplete:
    """Every non-live direction finished: the shell may close the stream."""


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session failed; ``by_peer`` when the peer aborted it."""

    error: CrdtKvError
    by_peer: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer ended the stream; ``complete`` says whether the sync had finished."""

    complete: bool


Event = Connected | BatchApplied | SyncComplete | SessionFailed | ConnectionClosed


# --- state tables ----------------------------------------------------------------------


class ConnState(Enum):
    """Lifecycle of the connection."""

    IDLE = "idle"
    HELLO_SENT = "hello-sent"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class OutState(Enum):
    """Our log streaming to the peer."""

    DISABLED = "disabled"
    WAITING = "waiting"  # for the peer's Request
    STREAMING = "streaming"
    DRAINING = "draining"  # final batch sent, awaiting acks
    LIVE = "live"  # caught up, pushing new commits
    DONE = "done"


class InState(Enum):
    """The peer's log streaming to us."""

    DISABLED = "disabled"
    REQUESTED = "requested"
    LIVE = "live"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class _Start:
    pass


@dataclass(frozen=True, slots=True)
class _EndOfStream:
    pass


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


@dataclass(frozen=True, slots=True)
class _HeadReached:
    pass


@dataclass(frozen=True, slots=True)
class _HeadReachedLive:
    pass


@dataclass(frozen=True, slots=True)
class _AllAcked:
    pass


@dataclass(frozen=True, slots=True)
class _FinalBatch:
    pass


@dataclass(frozen=True, slots=True)
class _TailBatch:
    pass


_C, _O, _I = ConnState, OutState, InState

CONN_TABLE: dict[tuple[ConnState, type], ConnState] = {
    (_C.IDLE, _Start): _C.HELLO_SENT,
    (_C.HELLO_SENT, Hello): _C.OPEN,
    (_C.OPEN, Request): _C.OPEN,
    (_C.OPEN, Batch): _C.OPEN,
    (_C.OPEN, Ack): _C.OPEN,
    (_C.HELLO_SENT, Abort): _C.FAILED,
    (_C.OPEN, Abort): _C.FAILED,
    (_C.HELLO_SENT, _EndOfStream): _C.CLOSED,
    (_C.OPEN, _EndOfStream): _C.CLOSED,
    (_C.IDLE, _Stop): _C.CLOSED,
    (_C.HELLO_SENT, _Stop): _C.CLOSED,
    (_C.OPEN, _Stop): _C.CLOSED,
}
OUT_TABLE: dict[tuple[OutState, type], OutState] = {
    (_O.WAITING, Request): _O.STREAMING,
    (_O.STREAMING, _HeadReached): _O.DRAINING,
    (_O.STREAMING, _HeadReachedLive): _O.LIVE,
    (_O.STREAMING, Ack): _O.STREAMING,
    (_O.DRAINING, Ack): _O.DRAINING,
    (_O.LIVE, Ack): _O.LIVE,
    (_O.DRAINING, _AllAcked): _O.DONE,
}
IN_TABLE: dict[tuple[InState, type], InState] = {
    (_I.REQUESTED, Batch): _I.REQUESTED,
    (_I.LIVE, Batch): _I.LIVE,
    (_I.REQUESTED, _FinalBatch): _I.DONE,
    (_I.REQUESTED, _TailBatch): _I.LIVE,
    (_I.LIVE, _TailBatch): _I.LIVE,
}


_S = TypeVar("_S", ConnState, OutState, InState)
MAX_REASON_BYTES = 4096


def _clip_reason(text: str) -> str:
    """``text`` as valid UTF-8 of at most :data:`MAX_REASON_BYTES` bytes (the wire limit)."""
    raw = text.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return raw.decode("utf-8", "ignore")


def _utf8_len(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return 1 << 30  # a lone surrogate cannot go on the wire at all


def _step(table: dict[tuple[_S, type], _S], state: _S, event: object, what: str) -> _S:
    try:
        return table[(state, type(event))]
    except KeyError:
        name = type(event).__name__.lstrip("_")
        raise RemoteProtocolError(f"unexpected {name} while {what} is {state}") from None


# --- statistics ------------------------------------------------------------------------


@dataclass(slots=True)
class SessionStats:
    """Counters of one session (mutable; read them at any time)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    batches_sent: int = 0
    batches_received: int = 0
    entries_sent: int = 0
    entries_received: int = 0
    entries_changed: int = 0
    skew_rejected: int = 0
    errors: int = 0


# --- the session -----------------------------------------------------------------------


class Session:
    """One side of a replication session over a reliable ordered byte stream.

    ``mode``: ``"both"`` (default), ``"push"`` (only send our log) or ``"pull"`` (only
    receive theirs); data flows from A to B only if A may send and B wants to receive.
    ``live``: after catching up, keep the session open and receive new commits as they
    happen. ``max_batch_entries`` caps what we accept (and send) per batch; batches we send
    are also cut at about ``max_batch_bytes``; at most ``window`` batches are in flight
    unacknowledged, so a huge catch-up holds bounded memory on both sides and commits in
    bounded chunks.
    """

    def __init__(
        self,
        store: Store,
        *,
        mode: Mode | str = "both",
        live: bool = False,
        cluster_id: str = "default",
        max_batch_entries: int = 1000,
        max_batch_bytes: int = 1 << 20,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        window: int = 4,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown sync mode {mode!r}; use one of {', '.join(MODES)}")
        for name, value in (
            ("max_batch_entries", max_batch_entries),
            ("max_batch_bytes", max_batch_bytes),
            ("max_frame_bytes", max_frame_bytes),
            ("window", window),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(cluster_id, str) or _utf8_len(cluster_id) > 255:
            raise ConfigError(
                f"cluster_id must be text of at most 255 UTF-8 bytes: {cluster_id!r:.60}"
            )
        self.store = store
        self.mode = mode
        self.live = live
        self.cluster_id = cluster_id
        self.max_batch_entries = max_batch_entries
        self.max_batch_bytes = max_batch_bytes
        self.window = window
        self.state = ConnState.IDLE
        self.out_state = OutState.DISABLED
        self.in_state = InState.DISABLED
        self.remote: Hello | None = None
        self.stats = SessionStats()
        self.error: CrdtKvError | None = None
        self._decoder = FrameDecoder(max_frame_bytes=max_frame_bytes)
        self._outbox = bytearray()
        self._events: list[Event] = []
        self._out_pos = 0
        self._unacked: deque[int] = deque()
        self._in_pos = 0
        self._remote_head = 0
        self._remote_live = False
        self._stop_at: int | None = None
        self._echo: tuple[str, bytes] | None = None
        self._complete = False

    # --- properties -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session closed or failed."""
        return self.state in (ConnState.CLOSED, ConnState.FAILED)

    @property
    def complete(self) -> bool:
        """True once every non-live direction finished."""
        return self._complete

    @property
    def cursor(self) -> int:
        """Last sequence of the peer's log applied here in this session."""
        return self._in_pos

    @property
    def lag(self) -> int:
        """How many of the peer's log positions we know of but have not applied."""
        return max(0, self._remote_head - self._in_pos) if self.in_state is not _I.DISABLED else 0

    # --- driving --------------------------------------------------------------------

    def start(self) -> None:
        """Queue our ``Hello``. Call once, before anything else."""
        if self.state is not ConnState.IDLE:
            raise LocalProtocolError(f"start() called while the session is {self.state}")
        self.state = CONN_TABLE[(self.state, _Start)]
        st = self.store
        self._send(
            Hello(
                version=PROTOCOL_VERSION,
                cluster_id=self.cluster_id,
                peer_id=st.peer_id,
                incarnation=st.incarnation,
                hlc=st.hlc.now(),
                last_seq=st.last_seq,
                send=self.mode in ("both", "push"),
                receive=self.mode in ("both", "pull"),
                live=self.live,
                key_encoding=st.key_encoding,
                value_encoding=st.value_encoding,
                max_batch_entries=self.max_batch_entries,
            )
        )

    def data_to_send(self) -> bytes:
        """Take every byte queued for the peer (possibly ``b""``)."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Process bytes from the peer (``b""`` = end of stream); return the new events.

        Bad input from the peer never raises: it fails the session (an ``Abort`` is queued,
        a :class:`SessionFailed` event returned) and nothing of the bad message is applied.
        Bytes arriving after the session closed are discarded.
        """
        if self.state is ConnState.IDLE:
            raise LocalProtocolError("receive_data() before start()")
        if self.closed:
            return self._take_events()
        if not data:
            self.state = _step(CONN_TABLE, self.state, _EndOfStream(), "the connection")
            self._events.append(ConnectionClosed(self._complete))
            return self._take_events()
        self.stats.bytes_received += len(data)
        try:
            for payload in self._decoder.feed(data):
                self.stats.frames_received += 1
                self._handle(decode_message(payload, max_batch_entries=self.max_batch_entries))
                if self.closed:
                    break
        except ClockSkewError as exc:
            self._fail(exc, AbortCode.CLOCK_SKEW)
        except ProtocolError as exc:
            self._fail(exc, AbortCode.PROTOCOL)
        return self._take_events()

    def local_changed(self) -> None:
        """The store committed something: stream it if the peer follows us live."""
        if self.out_state is OutState.LIVE and not self.closed:
            self._pump()

    @property
    def settled(self) -> bool:
        """True when nothing is in flight: every direction ended or is tailing live."""
        return (
            self.state is ConnState.OPEN
            and self.in_state in (_I.DISABLED, _I.DONE, _I.LIVE)
            and self.out_state in (_O.DISABLED, _O.DONE, _O.LIVE)
            and not self._unacked
        )

    def close(self, reason: str = "closed by local side") -> None:
        """Close the session; one that is not settled tells the peer why. Idempotent."""
        if self.closed:
            return
        if self.state is not ConnState.IDLE and not self._complete and not self.settled:
            self._send(Abort(AbortCode.SHUTDOWN, _clip_reason(reason)))
        self.state = CONN_TABLE[(self.state, _Stop)]

    # --- internals ------------------------------------------------------------------

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _send(self, msg: Message) -> None:
        frame = encode_frame(msg)
        self._outbox += frame
        self.stats.bytes_sent += len(frame)
        self.stats.frames_sent += 1

    def _fail(self, error: CrdtKvError, code: AbortCode) -> None:
        if self.closed:
            return
        self._send(Abort(code, _clip_reason(str(error))))
        self.state = ConnState.FAILED
        self.error = error
        self.stats.errors += 1
        self._events.append(SessionFailed(error))

    def _handle(self, msg: Message) -> None:
        self.state = _step(CONN_TABLE, self.state, msg, "the connection")
        if isinstance(msg, Batch):
            self._on_batch(msg)
        elif isinstance(msg, Ack):
            self._on_ack(msg)
        elif isinstance(msg, Request):
            self._on_request(msg)
        elif isinstance(msg, Hello):
            self._on_hello(msg)
        else:
            peer = self.remote.peer_id if self.remote else "peer"
            err = ProtocolError(f"{peer} aborted the session (code {msg.code}): {msg.reason}")
            self.error = err
            self.stats.errors += 1
            self._events.append(SessionFailed(err, by_peer=True))

    def _incompatible(self, what: str) -> None:
        self._fail(RemoteProtocolError(what), AbortCode.INCOMPATIBLE)

    def _on_hello(self, h: Hello) -> None:
        st = self.store
        if h.version != PROTOCOL_VERSION:
            return self._incompatible(
                f"peer {h.peer_id!r} speaks protocol {h.version}, we speak {PROTOCOL_VERSION}"
            )
        if h.cluster_id != self.cluster_id:
            return self._incompatible(
                f"peer {h.peer_id!r} is in cluster {h.cluster_id!r}, not {self.cluster_id!r}"
            )
        if h.peer_id == st.peer_id:
            return self._incompatible(
                f"peer id {h.peer_id!r} is our own: a self-connection or a duplicated store"
            )
        if (h.key_encoding, h.value_encoding) != (st.key_encoding, st.value_encoding):
            return self._incompatible(
                f"peer {h.peer_id!r} uses encodings {h.key_encoding}/{h.value_encoding}, "
                f"we use {st.key_encoding}/{st.value_encoding}"
            )
        if h.max_batch_entries < 1:
            raise RemoteProtocolError(f"peer {h.peer_id!r} accepts no entries per batch")
        try:
            st.hlc.update(h.hlc)
        except ClockSkewError as exc:
            self.stats.skew_rejected += 1
            raise ClockSkewError(
                f"peer {h.peer_id!r}: {exc}",
                remote_hlc=exc.remote_hlc,
                local_wall_ms=exc.local_wall_ms,
                max_offset_ms=exc.max_offset_ms,
            ) from None
        self.remote = h
        self._echo = (h.peer_id, h.incarnation)
        self._remote_head = h.last_seq
        if self.mode in ("both", "push") and h.receive:
            self.out_state = OutState.WAITING
        cursor = 0
        if self.mode in ("both", "pull") and h.send:
            cursor = st.cursor(h.peer_id, h.incarnation)
            self._in_pos = cursor
            self.in_state = InState.REQUESTED
            self._send(Request(cursor, self.live))
        self._events.append(Connected(h.peer_id, h.incarnation, h.cluster_id, h.last_seq, cursor))
        self._check_complete()
        return None

    def _on_request(self, r: Request) -> None:
        self.out_state = _step(OUT_TABLE, self.out_state, r, "our sending side")
        if r.since > self.store.last_seq:
            peer = self.remote.peer_id if self.remote else "peer"
            return self._incompatible(
                f"peer {peer!r} asks for our log after {r.since}, but it ends at "
                f"{self.store.last_seq}: this store lost data or was restored under the same "
                "incarnation"
            )
        self._out_pos = r.since
        # Our own ``live`` bounds how long we serve: a one-shot side never tails its log.
        self._remote_live = r.live and self.live
        # A one-shot pull gets the log as it was when asked; otherwise a busy writer would
        # keep moving the head and the sync would never complete.
        self._stop_at = None if self._remote_live else self.store.last_seq
        self._pump()
        return None

    def _pump(self) -> None:
        st, remote = self.store, self.remote
        assert remote is not None
        limit = min(self.max_batch_entries, remote.max_batch_entries)
        while len(self._unacked) < self.window and self.out_state in (_O.STREAMING, _O.LIVE):
            head = st.last_seq if self._stop_at is None else self._stop_at
            if self._out_pos >= head and self.out_state is _O.LIVE:
                return
            entries: list[RawEntry] = []
            size = 0
            covered = -1
            for e in st.raw_changes(self._out_pos, limit=limit, exclude_source=self._echo):
                if e.seq > head:
                    break
                entries.append(e)
                size += len(e.key) + len(e.value) + 24
                if size >= self.max_batch_bytes:
                    covered = e.seq
                    break
            if covered < 0:
                covered = head if len(entries) < limit else entries[-1].seq
            done = covered >= head
            if done and self._stop_at is not None and st.last_seq > covered:
                # Past the pinned head: skip what we applied from this very peer meanwhile
                # (never sent back), so its cursor does not lag behind our head for nothing.
                nxt = next(iter(st.raw_changes(covered, limit=1, exclude_source=self._echo)), None)
                covered = st.last_seq if nxt is None else max(covered, nxt.seq - 1)
            self._send(Batch(self._out_pos, covered, done, tuple(entries)))
            self._unacked.append(covered)
            self._out_pos = covered
            self.stats.batches_sent += 1
            self.stats.entries_sent += len(entries)
            if done and self.out_state is _O.STREAMING:
                event = _HeadReachedLive() if self._remote_live else _HeadReached()
                self.out_state = _step(OUT_TABLE, self.out_state, event, "our sending side")

    def _on_ack(self, a: Ack) -> None:
        self.out_state = _step(OUT_TABLE, self.out_state, a, "our sending side")
        if not self._unacked or self._unacked[0] != a.seq:
            want = self._unacked[0] if self._unacked else None
            raise RemoteProtocolError(f"ack for {a.seq} does not match the oldest batch ({want})")
        self._unacked.popleft()
        if self.out_state is _O.DRAINING:
            if not self._unacked:
                self.out_state = _step(OUT_TABLE, self.out_state, _AllAcked(), "our sending side")
                self._check_complete()
        else:
            self._pump()

    def _on_batch(self, b: Batch) -> None:
        self.in_state = _step(IN_TABLE, self.in_state, b, "our receiving side")
        remote = self.remote
        assert remote is not None
        if b.from_seq != self._in_pos:
            raise RemoteProtocolError(
                f"batch from {remote.peer_id!r} starts at {b.from_seq}, "
                f"but our cursor is at {self._in_pos}"
            )
        for e in b.entries:
            if len(e.key) > MAX_KEY_BYTES or len(e.value) > MAX_VALUE_BYTES:
                # The store enforces these limits on local writes only.
                return self._fail(
                    RemoteProtocolError(
                        f"batch from peer {remote.peer_id!r} rejected: key {e.key[:40]!r} "
                        f"({len(e.key)} bytes, limit {MAX_KEY_BYTES}) or its value "
                        f"({len(e.value)} bytes, limit {MAX_VALUE_BYTES}) is too large"
                    ),
                    AbortCode.REJECTED_DATA,
                )
        changed = 0
        if b.to_seq > b.from_seq or b.entries:
            try:
                changed = self.store.apply_raw(
                    b.entries, cursor=(remote.peer_id, remote.incarnation, b.to_seq)
                )
            except ClockSkewError as exc:
                self.stats.skew_rejected += len(b.entries)
                raise ClockSkewError(
                    f"batch from peer {remote.peer_id!r} rejected: {exc}",
                    remote_hlc=exc.remote_hlc,
                    local_wall_ms=exc.local_wall_ms,
                    max_offset_ms=exc.max_offset_ms,
                ) from None
            except EncodingError as exc:
                return self._fail(
                    RemoteProtocolError(f"batch from peer {remote.peer_id!r} rejected: {exc}"),
                    AbortCode.REJECTED_DATA,
                )
        self._in_pos = b.to_seq
        self._remote_head = max(self._remote_head, b.to_seq)
        self.stats.batches_received += 1
        self.stats.entries_received += len(b.entries)
        self.stats.entries_changed += changed
        self._send(Ack(b.to_seq))
        if b.done:
            # The sender tails its log only if both sides asked for live (see _on_request).
            event = _TailBatch() if self.live and remote.live else _FinalBatch()
            self.in_state = _step(IN_TABLE, self.in_state, event, "our receiving side")
        self._events.append(BatchApplied(len(b.entries), changed, b.from_seq, b.to_seq, b.done))
        self._check_complete()

    def _check_complete(self) -> None:
        if self._complete:
            return
        if self.in_state in (_I.DISABLED, _I.DONE) and self.out_state in (_O.DISABLED, _O.DONE):
            self._complete = True
            self._events.append(SyncComplete())
