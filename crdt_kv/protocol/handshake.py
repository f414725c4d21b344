"""The Hello we send, the checks a peer's Hello must pass (spec section 5), and the check
of the cursor a peer's Request proves (spec section 9, rollback detection)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Collection
from dataclasses import replace
from itertools import accumulate

from crdt_kv.errors import ClockSkewError, PeerIdentityError, RolledBackError
from crdt_kv.protocol.framing import DEFAULT_MAX_FRAME_BYTES, HELLO_MAX_FRAME_BYTES
from crdt_kv.protocol.messages import (
    PROTOCOL_VERSION,
    Hello,
    Request,
    cbor_array_head,
    encode_message,
    gossip_row_wire,
)
from crdt_kv.protocol.options import SessionStats
from crdt_kv.protocol.replica import Replica

__all__ = [
    "check_rollback",
    "fit_hello",
    "hello_mismatch",
    "observe_peer_clock",
    "our_hello",
    "peer_refusal",
]


def our_hello(
    replica: Replica,
    *,
    cluster_id: str,
    mode: str,
    live: bool,
    max_batch_entries: int,
    repair: bool = False,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Hello:
    """Our Hello: who we are, our clock and log head, our membership gossip, and what we
    want of the session; trimmed to :data:`HELLO_MAX_FRAME_BYTES` (:func:`fit_hello`)."""
    hlc = replica.clock_now()
    hello = Hello(
        version=PROTOCOL_VERSION,
        cluster_id=cluster_id,
        peer_id=replica.peer_id,
        incarnation=replica.incarnation,
        hlc=hlc,
        last_seq=replica.last_seq,
        send=mode in ("both", "push"),
        receive=mode in ("both", "pull"),
        live=live,
        key_encoding=replica.key_encoding,
        value_encoding=replica.value_encoding,
        max_batch_entries=max_batch_entries,
        conflicts=replica.conflict_mode,
        gc=replica.membership.gossip(hlc),
        repair=repair,
        max_frame_bytes=max_frame_bytes,
    )
    return fit_hello(hello)


def fit_hello(h: Hello) -> Hello:
    """``h`` with as many of its gossip rows as fit a frame of
    :data:`HELLO_MAX_FRAME_BYTES` (the peer refuses a longer first frame), dropping the
    least recently seen members first; the sender's own row always fits (the other fields
    take at most about 1 KiB). A member left out is simply not reported by this Hello, as
    one past ``MAX_GOSSIP_ROWS`` is not.

    The rows' encoded sizes are added up (from the row encodings
    :func:`~crdt_kv.protocol.messages.gossip_row_wire` keeps), not the Hello
    encoded once per step of a search: with a thousand members, every connection's Hello
    cost milliseconds of the event loop (bench_hostile)."""
    if len(h.gc) <= 1:
        return h
    # What the other fields leave for the gc array (its head and rows): an empty array
    # is its head alone, one byte.
    room = HELLO_MAX_FRAME_BYTES - (len(encode_message(replace(h, gc=()))) - 1)
    ends = list(accumulate(map(len, map(gossip_row_wire, h.gc))))  # ends[k-1]: k rows
    if len(cbor_array_head(len(ends))) + ends[-1] <= room:
        return h
    # The array's head takes 1-3 bytes here (at most 1,024 rows are sent, 65,535 fit in 3):
    # start from what surely fits and add rows while the exact size allows.
    kept = bisect_right(ends, room - len(cbor_array_head(len(ends))))
    while kept < len(ends) and len(cbor_array_head(kept + 1)) + ends[kept] <= room:
        kept += 1
    return replace(h, gc=h.gc[: max(kept, 1)])


def observe_peer_clock(
    replica: Replica, h: Hello, stats: SessionStats, *, transit_ms: int = 0
) -> None:
    """Merge the stamp of the peer's Hello into our clock, judged against our other peers
    (:mod:`crdt_kv.skew`) with ``transit_ms`` credited (the most the Hello can have been in
    flight); a refused stamp is counted and raised as :class:`ClockSkewError` naming the
    peer."""
    try:
        replica.observe_clock(h.hlc, peer=h.peer_id, transit_ms=transit_ms)
    except ClockSkewError:
        stats.skew_rejected += 1
        raise


def peer_refusal(
    claimed: str, identity: str | None, allowed: Collection[str] | None
) -> PeerIdentityError | None:
    """Why the peer that claims ``claimed`` in its Hello is refused (abort code 7), or None.

    ``identity`` is the peer id the transport authenticated (a TLS certificate's), None if
    it authenticated nobody; ``allowed`` the peer ids admitted, None for any. The sans-I/O
    session never looks at certificates: the driver hands it what they proved.
    """
    if identity is not None and claimed != identity:
        return PeerIdentityError(
            f"peer with the certificate of {identity!r} claims to be {claimed!r}",
            reason="identity_mismatch",
            peer_id=identity,
        )
    if allowed is not None and claimed not in allowed:
        return PeerIdentityError(
            f"peer {claimed!r} is not in allowed_peers", reason="not_allowed", peer_id=claimed
        )
    return None


def hello_mismatch(h: Hello, replica: Replica, cluster_id: str) -> str | None:
    """Why the peer's Hello makes the session incompatible (abort code 3), or None."""
    if h.version != PROTOCOL_VERSION:
        return f"peer {h.peer_id!r} speaks protocol {h.version}, we speak {PROTOCOL_VERSION}"
    if h.cluster_id != cluster_id:
        return f"peer {h.peer_id!r} is in cluster {h.cluster_id!r}, not {cluster_id!r}"
    if h.peer_id == replica.peer_id:
        return f"peer id {h.peer_id!r} is our own: a self-connection or a duplicated store"
    ours = (replica.key_encoding, replica.value_encoding)
    if (h.key_encoding, h.value_encoding) != ours:
        return (
            f"peer {h.peer_id!r} uses encodings {h.key_encoding}/{h.value_encoding}, "
            f"we use {ours[0]}/{ours[1]}"
        )
    if h.conflicts != replica.conflict_mode:
        return (
            f"peer {h.peer_id!r} keeps conflicts as {h.conflicts!r}, we keep them as "
            f"{replica.conflict_mode!r}: replicas in different conflict modes cannot sync"
        )
    return None


def check_rollback(replica: Replica, r: Request, remote: Hello | None) -> RolledBackError | None:
    """The error to fail the session with when the peer's Request proves a cursor our log no
    longer matches (we were restored from a copy: ``spec/protocol.md`` section 9), after
    taking a new incarnation so that peers pull the whole log again; None if it may be true.
    """
    why = replica.check_cursor(r.since, r.proof)
    if why is None:
        return None
    peer = remote.peer_id if remote is not None else "peer"
    replica.rotate_incarnation()
    return RolledBackError(
        f"peer {peer!r} proved a cursor our log no longer matches ({why}): this store was "
        "rolled back; it took a new incarnation so peers pull it again"
    )
