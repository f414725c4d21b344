"""The sans-I/O replication core: wire messages, the session state machine, and the
per-peer policy (:class:`PeerLink`) that the trio node and the simulator both drive.

Nothing here reads a clock, sleeps, opens a socket or starts a thread: every time is an
argument, storage work is requested (:mod:`crdt_kv.protocol.storage`) and performed by
the driver.
"""

from __future__ import annotations

from crdt_kv.protocol.backoff import Backoff
from crdt_kv.protocol.catchup import (
    DEFAULT_CATCH_UP_TIMEOUT_S,
    CatchUpPeer,
    CatchUpReport,
    CatchUpTracker,
)
from crdt_kv.protocol.events import (
    BatchApplied,
    CaughtUp,
    CloseConnection,
    Connected,
    ConnectionClosed,
    DialDue,
    DivergenceFound,
    Event,
    LinkEvent,
    LinkFailed,
    RepairFinished,
    SessionEnded,
    SessionFailed,
    SyncComplete,
)
from crdt_kv.protocol.gc import DEFAULT_GC_INTERVAL_S, CollectGarbage, GcPolicy, GcResult
from crdt_kv.protocol.link import LinkRole, LinkState, PeerLink
from crdt_kv.protocol.linkconfig import LinkConfig
from crdt_kv.protocol.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    HELLO_MAX_FRAME_BYTES,
    MIN_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Abort,
    AbortCode,
    Ack,
    Batch,
    FrameDecoder,
    Hello,
    Message,
    MsgType,
    Repair,
    Request,
    Verify,
    decode_message,
    encode_frame,
    encode_message,
)
from crdt_kv.protocol.options import MODES, SessionStats
from crdt_kv.protocol.replica import Replica
from crdt_kv.protocol.session import Session
from crdt_kv.protocol.states import ConnState, InState, OutState
from crdt_kv.protocol.storage import ApplyBatch, LogSlice, ReadLog, RepairWork, StorageRequest

__all__ = [
    "DEFAULT_CATCH_UP_TIMEOUT_S",
    "DEFAULT_GC_INTERVAL_S",
    "DEFAULT_MAX_FRAME_BYTES",
    "HELLO_MAX_FRAME_BYTES",
    "MIN_MAX_FRAME_BYTES",
    "MODES",
    "PROTOCOL_VERSION",
    "Abort",
    "AbortCode",
    "Ack",
    "ApplyBatch",
    "Backoff",
    "Batch",
    "BatchApplied",
    "CatchUpPeer",
    "CatchUpReport",
    "CatchUpTracker",
    "CollectGarbage",
    "CaughtUp",
    "CloseConnection",
    "ConnState",
    "Connected",
    "ConnectionClosed",
    "DialDue",
    "DivergenceFound",
    "Event",
    "FrameDecoder",
    "GcPolicy",
    "GcResult",
    "Hello",
    "InState",
    "LinkConfig",
    "LinkEvent",
    "LinkFailed",
    "LinkRole",
    "LinkState",
    "LogSlice",
    "Message",
    "MsgType",
    "OutState",
    "PeerLink",
    "ReadLog",
    "Repair",
    "RepairFinished",
    "RepairWork",
    "Replica",
    "Request",
    "Session",
    "SessionEnded",
    "SessionFailed",
    "SessionStats",
    "StorageRequest",
    "SyncComplete",
    "Verify",
    "decode_message",
    "encode_frame",
    "encode_message",
]
