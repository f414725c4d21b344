"""The sans-I/O range-fingerprint reconciliation machine (``spec/reconcile.md``).

After the hellos the two ends take turns. A turn answers every question of the peer's
previous turn at once, and asks new ones:

- a :class:`Children` item (the peer's fingerprints of a node's 16 children): children
  whose fingerprint and count equal ours are done; if the peer holds nothing there we
  ship all ours; if we hold at most ``item_threshold`` items (or the node is a single
  position) we list them (:class:`Items`); otherwise we send that child's own children.
- an :class:`Items` item: we ship what the peer lacks or holds differently and ask
  (``missing``, ``differing``) for what we lack or hold differently.
- ``missing`` / ``differing`` keys: we ship them, except a state the peer lacks whose stamp
  is below the peer's collection horizon: the peer collected it, so we drop ours.

Our quarantined keys (lost here, hash 0 in our fingerprints) are *probed*: our first
answer lists each in an :class:`Items` item of its single position. The peer's next turn
ships its state (``differing``) or says it holds none (``missing``, or silence: it lost
the key too). The keys it answered for either way are reported to storage
(:class:`~crdt_kv.repair.work.Answered`) once its states are merged, which releases a
key once every active partner has answered for it.

A turn without questions is the last one: both ends know it. The machine performs no I/O
and reads no clock: bytes go in through :meth:`receive_data` and out through
:meth:`data_to_send`, storage work comes out as :mod:`~crdt_kv.repair.work` requests and
its results go back in through :meth:`storage_done`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from crdt_kv.errors import ConfigError, CrdtKvError, LocalProtocolError, RemoteProtocolError
from crdt_kv.repair.frames import turn_frames
from crdt_kv.repair.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    MIN_FRAME_BYTES,
    REPAIR_VERSION,
    Children,
    Entries,
    FrameDecoder,
    Items,
    Message,
    RepairHello,
    Round,
    decode_message_bytes,
    encode_frame,
)
from crdt_kv.repair.report import Event, Finished, HelloReceived, ReconcileReport, TurnDone
from crdt_kv.repair.tree import (
    FP_MASK,
    MAX_LEVEL,
    child_nodes,
    node_range,
    position,
    state_stamp,
)
from crdt_kv.repair.work import (
    Answered,
    ApplyEntries,
    Describe,
    Described,
    DropKeys,
    Fingerprints,
    ListItems,
    ReadEntries,
    Work,
)
from crdt_kv.version import RawEntry

__all__ = ["APPLY_CHUNK", "Reconciler"]

T = TypeVar("T")
Step = Work[object] | None
"""What the session generator yields: storage work, or None while it waits for frames."""
Node = tuple[int, int]
APPLY_CHUNK = 2048
"""Received entries are merged in atomic chunks of at most this many."""


def _ask(work: Work[T]) -> Generator[Step, object, T]:
    result = yield work
    return cast(T, result)


@dataclass(frozen=True, slots=True)
class _Turn:
    entries: tuple[RawEntry, ...]
    ranges: tuple[Children | Items, ...]
    missing: tuple[bytes, ...]
    differing: tuple[bytes, ...]

    @property
    def asks(self) -> bool:
        return bool(self.ranges or self.missing or self.differing)


@dataclass(slots=True)
class _Answer:
    """What a turn of ours carries, built while answering the peer's."""

    ranges: list[Children | Items]
    ask_missing: list[bytes]
    ask_differing: list[bytes]
    ship: dict[bytes, bool]
    """Keys whose states we send: True when the peer lacks the key (absence may win)."""


class Reconciler:
    """One end of one reconciliation. Drive it: :meth:`start`, then loop on
    :meth:`storage_request` (perform, :meth:`storage_done`), :meth:`data_to_send`, and
    :meth:`receive_data` until :attr:`finished`. Any error raised is final."""

    def __init__(
        self, *, item_threshold: int = 16, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        if item_threshold < 1:
            raise ConfigError(f"item_threshold must be >= 1, got {item_threshold}")
        if not MIN_FRAME_BYTES <= max_frame_bytes <= 0xFFFFFFFF:
            raise ConfigError(
                f"max_frame_bytes must be in {MIN_FRAME_BYTES}..{0xFFFFFFFF}, got {max_frame_bytes}"
            )
        self.item_threshold = item_threshold
        self.max_frame_bytes = max_frame_bytes
        self._decoder = FrameDecoder(max_frame_bytes=max_frame_bytes)
        self._inbox: deque[Message] = deque()
        self._out = bytearray()
        self._events: list[Event] = []
        self._gen = self._run()
        self._pending: Work[object] | None = None
        self._waiting = False
        self._started = False
        self._error: CrdtKvError | None = None
        self.report: ReconcileReport | None = None
        self._peer: RepairHello | None = None
        self._lost: frozenset[bytes] = frozenset()
        self._probes: tuple[bytes, ...] | None = None
        """Quarantined keys our last turn probed (None: not probed yet)."""
        self._epoch = 0
        """Our quarantine epoch when ``_lost`` was read."""
        self._answered: set[bytes] = set()
        """Our quarantined keys the peer answered for: shipped (merged) or not held."""
        self._leader = self._in_sync = False
        self._flights = 0
        self._counts = dict.fromkeys(
            ("bytes_sent", "bytes_received", "entries_sent", "entries_received"), 0
        ) | dict.fromkeys(("changed", "dropped", "refused"), 0)

    # --- driving ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the reconciliation is over (the report is ready)."""
        return self.report is not None

    def start(self) -> list[Event]:
        """Begin: the first storage request (reading what our hello says) is ready."""
        if self._started:
            raise LocalProtocolError("the reconciler was already started")
        self._started = True
        self._advance(None)
        return self._take_events()

    def storage_request(self) -> Work[object] | None:
        """The storage work to perform now, or None."""
        return self._pending

    def storage_done(self, result: object) -> list[Event]:
        """Hand back the result of :meth:`storage_request`'s work."""
        if self._pending is None:
            raise LocalProtocolError("no storage request is pending")
        self._pending = None
        self._advance(result)
        return self._take_events()

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; raises :class:`RemoteProtocolError` on bad input."""
        self._check_alive()
        if self.finished:
            if data:
                self._error = RemoteProtocolError("the peer sent data after the last turn")
                raise self._error
            return []
        self._counts["bytes_received"] += len(data)
        try:
            for payload in self._decoder.feed(data):
                self._inbox.append(decode_message_bytes(payload))
        except CrdtKvError as exc:
            self._error = exc
            raise
        if self._waiting and self._inbox:
            self._waiting = False
            self._advance(None)
        return self._take_events()

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (empty when none)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _check_alive(self) -> None:
        if self._error is not None:
            raise LocalProtocolError(f"the reconciliation already failed: {self._error}")

    def _advance(self, value: object) -> None:
        self._check_alive()
        try:
            step = self._gen.send(value)
            while step is None and self._inbox:
                step = self._gen.send(None)
        except StopIteration:
            self.report = self._report()
            self._events.append(Finished(self.report))
            return
        except CrdtKvError as exc:
            self._error = exc
            raise
        if step is None:
            self._waiting = True
        else:
            self._pending = step

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _report(self) -> ReconcileReport:
        c = self._counts
        return ReconcileReport(
            peer_id=self._peer.peer_id if self._peer else "",
            leader=self._leader,
            in_sync=self._in_sync,
            round_trips=(self._flights + 1) // 2,
            **c,
        )

    # --- the session -----------------------------------------------------------------

    def _next(self) -> Generator[Step, object, Message]:
        while not self._inbox:
            yield None
        return self._inbox.popleft()

    def _send(self, frame: bytes) -> None:
        self._out += frame
        self._counts["bytes_sent"] += len(frame)

    def _run(self) -> Generator[Step, object, None]:
        yield from self._session()
        if self._answered and self._peer is not None:
            keys = tuple(sorted(self._answered))
            yield from _ask(Answered(self._peer.peer_id, keys, self._epoch))

    def _session(self) -> Generator[Step, object, None]:
        me = yield from _ask(Describe())
        self._lost, self._epoch = frozenset(me.lost), me.epoch
        hello = self._hello(me)
        self._send(encode_frame(hello))
        msg = yield from self._next()
        if not isinstance(msg, RepairHello):
            raise RemoteProtocolError(f"expected the peer's hello, got {type(msg).__name__}")
        self._check_hello(msg, me)
        self._peer = msg
        self._flights = 1
        self._leader = me.peer_id < msg.peer_id
        # A quarantined key adds one to the count and nothing to the digest: equal digests
        # and counts with keys in quarantine (then both ends hold some) still reconcile.
        count = sum(c for _, c in me.top)
        self._in_sync = msg.digest == me.digest and msg.count == count and not me.lost
        self._events.append(HelloReceived(msg.peer_id, self._leader, self._in_sync))
        if self._in_sync:
            return
        if not self._leader and not (yield from self._answer(_Turn((), (msg.top,), (), ()))):
            return
        while True:
            turn = yield from self._receive_turn()
            self._heard(turn)
            if not turn.asks:
                yield from self._apply(turn.entries)
                self._turn_done(turn, 0, 0, answered=False)
                return
            if not (yield from self._answer(turn)):
                return

    def _hello(self, me: Described) -> RepairHello:
        sums = tuple(s & FP_MASK for s, _ in me.top)
        counts = tuple(c for _, c in me.top)
        return RepairHello(
            REPAIR_VERSION,
            me.peer_id,
            me.conflicts,
            me.key_encoding,
            me.value_encoding,
            me.gc_horizon,
            me.digest,
            sum(counts),
            self.max_frame_bytes,
            Children(0, 0, sums, counts),
        )

    @staticmethod
    def _check_hello(h: RepairHello, me: Described) -> None:
        who = f"peer {h.peer_id!r}"
        if h.version != REPAIR_VERSION:
            raise RemoteProtocolError(f"{who} speaks repair {h.version}, we {REPAIR_VERSION}")
        if h.peer_id == me.peer_id:
            raise RemoteProtocolError(f"{who} has our own peer id: a copied store or a loop")
        if h.conflicts != me.conflicts:
            raise RemoteProtocolError(
                f"{who} keeps conflicts as {h.conflicts!r}, we keep them as {me.conflicts!r}:"
                " replicas in different conflict modes cannot reconcile"
            )
        if (h.key_encoding, h.value_encoding) != (me.key_encoding, me.value_encoding):
            raise RemoteProtocolError(
                f"{who} uses encodings {h.key_encoding}/{h.value_encoding}, "
                f"we use {me.key_encoding}/{me.value_encoding}"
            )
        if h.max_frame_bytes < MIN_FRAME_BYTES:
            raise RemoteProtocolError(f"{who} accepts frames of only {h.max_frame_bytes} bytes")

    def _receive_turn(self) -> Generator[Step, object, _Turn]:
        entries: list[RawEntry] = []
        ranges: list[Children | Items] = []
        missing: list[bytes] = []
        differing: list[bytes] = []
        while True:
            msg = yield from self._next()
            if isinstance(msg, Entries):
                entries.extend(msg.entries)
            elif isinstance(msg, Round):
                ranges.extend(msg.ranges)
                missing.extend(msg.missing)
                differing.extend(msg.differing)
                if msg.last:
                    break
            else:
                raise RemoteProtocolError("the peer sent a second hello")
        self._flights += 1
        return _Turn(tuple(entries), tuple(ranges), tuple(missing), tuple(differing))

    def _apply(self, entries: tuple[RawEntry, ...]) -> Generator[Step, object, tuple[int, int]]:
        changed = refused = 0
        for i in range(0, len(entries), APPLY_CHUNK):
            c, r = yield from _ask(ApplyEntries(entries[i : i + APPLY_CHUNK]))
            changed, refused = changed + c, refused + r
        self._counts["entries_received"] += len(entries)
        self._counts["changed"] += changed
        self._counts["refused"] += refused
        if self._lost:
            self._answered.update(e.key for e in entries if e.key in self._lost)
        return changed, refused

    def _heard(self, turn: _Turn) -> None:
        """The peer's answer to our probes: a probed key it neither ships nor calls
        ``differing`` is one it holds no state of (``missing``, or listed with hash 0).
        A shipped one counts as answered once merged (:meth:`_apply`)."""
        if self._probes:
            shipped = set(turn.differing) | {e.key for e in turn.entries}
            self._answered.update(k for k in self._probes if k not in shipped)
            self._probes = ()

    def _probe(self, ans: _Answer) -> Generator[Step, object, None]:
        """Once per reconciliation: list each of our quarantined keys in the node of its
        single position, so the peer answers for each whatever its fingerprints say."""
        if self._probes is not None:
            return
        self._probes = tuple(self._lost)
        if not self._lost:
            return
        nodes = sorted({position(k) for k in self._lost})
        lists = yield from _ask(ListItems(tuple((p, p + 1) for p in nodes)))
        for p, mine in zip(nodes, lists, strict=True):
            keys = tuple(k for _, k, _ in mine)
            ans.ranges.append(Items(MAX_LEVEL, p, keys, tuple(h & FP_MASK for _, _, h in mine)))

    def _turn_done(self, turn: _Turn, sent: int, dropped: int, *, answered: bool) -> None:
        c = self._counts
        self._events.append(
            TurnDone(len(turn.entries), c["changed"], c["refused"], sent, dropped, answered)
        )

    def _answer(self, turn: _Turn) -> Generator[Step, object, bool]:
        """Apply the peer's entries, answer its questions in one turn; True if we asked."""
        yield from self._apply(turn.entries)
        ans = _Answer([], [], [], {})
        yield from self._compare(turn, ans)
        yield from self._probe(ans)
        for k in turn.missing:
            ans.ship.setdefault(k, True)
        for k in turn.differing:
            ans.ship[k] = False
        entries: list[RawEntry] = []
        if ans.ship:
            entries = yield from _ask(ReadEntries(tuple(ans.ship)))
        peer = self._peer
        assert peer is not None
        drop = [e.key for e in entries if ans.ship[e.key] and state_stamp(e) < peer.gc_horizon]
        dropped = 0
        if drop:
            dropped = yield from _ask(DropKeys(tuple(drop), peer.gc_horizon))
            self._counts["dropped"] += dropped
            gone = set(drop)
            entries = [e for e in entries if e.key not in gone]
        for frame in turn_frames(
            entries, ans.ranges, ans.ask_missing, ans.ask_differing, peer.max_frame_bytes
        ):
            self._send(frame)
        self._counts["entries_sent"] += len(entries)
        self._flights += 1
        self._turn_done(turn, len(entries), dropped, answered=True)
        return bool(ans.ranges or ans.ask_missing or ans.ask_differing)

    def _compare(self, turn: _Turn, ans: _Answer) -> Generator[Step, object, None]:
        """Compare the peer's ranges with ours: fill ``ans`` with our ranges, questions and
        the keys to ship."""
        probes = [
            (node, s, c)
            for r in turn.ranges
            if isinstance(r, Children)
            for node, s, c in zip(child_nodes(r.level, r.index), r.sums, r.counts, strict=True)
        ]
        ours: list[tuple[int, int]] = []
        if probes:
            ours = yield from _ask(Fingerprints(tuple(node_range(*n) for n, _, _ in probes)))
        split: list[Node] = []
        listed: list[Node] = []
        ship_all: list[Node] = []
        for (node, s, c), (osum, ocount) in zip(probes, ours, strict=True):
            if osum & FP_MASK == s and ocount == c:
                continue
            if c == 0:
                ship_all.append(node)
            elif ocount <= self.item_threshold or node[0] == MAX_LEVEL:
                listed.append(node)
            else:
                split.append(node)
        theirs = [r for r in turn.ranges if isinstance(r, Items)]
        nodes = [(r.level, r.index) for r in theirs] + listed + ship_all
        lists: list[list[tuple[int, bytes, int]]] = []
        if nodes:
            lists = yield from _ask(ListItems(tuple(node_range(*n) for n in nodes)))
        for r, mine in zip(theirs, lists, strict=False):
            _diff(r, mine, ans)
        for node, mine in zip(listed, lists[len(theirs) :], strict=False):
            keys = tuple(k for _, k, _ in mine)
            ans.ranges.append(Items(*node, keys, tuple(h & FP_MASK for _, _, h in mine)))
        for mine in lists[len(theirs) + len(listed) :]:
            for _, k, _ in mine:
                ans.ship.setdefault(k, True)
        if split:
            kids = [child for node in split for child in child_nodes(*node)]
            fps: Any = yield from _ask(Fingerprints(tuple(node_range(*n) for n in kids)))
            for i, node in enumerate(split):
                part = fps[16 * i : 16 * i + 16]
                sums = tuple(s & FP_MASK for s, _ in part)
                ans.ranges.append(Children(*node, sums, tuple(c for _, c in part)))


def _diff(r: Items, mine: list[tuple[int, bytes, int]], ans: _Answer) -> None:
    """Our items of node ``r`` against the peer's list."""
    theirs = dict(zip(r.keys, r.hashes, strict=True))
    for _, key, h in mine:
        th = theirs.pop(key, None)
        if th is None:
            ans.ship.setdefault(key, True)
        elif th != h & FP_MASK:
            ans.ship[key] = False
            ans.ask_differing.append(key)
    ans.ask_missing.extend(theirs)
