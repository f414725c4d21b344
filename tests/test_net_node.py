"""``crdt_kv.serve`` / ``Node`` over real loopback TCP: chains converge, stats, events,
hostile clients, clean shutdown, reconnect with backoff (crdt_kv/net/node.py)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from net_helpers import (
    Model,
    RawPeer,
    addr,
    assert_converged,
    assert_matches_model,
    free_tcp_port,
    hello_for,
    raw_frame,
    tcp_refused,
    wait_until,
)

import crdt_kv
from crdt_kv import ClosedError, ConfigError, Node, Store
from crdt_kv.net import (
    UNIDENTIFIED,
    Backoff,
    ChangeEvent,
    ConnectEvent,
    ConnectionEvent,
    DisconnectEvent,
    ErrorEvent,
    parse_address,
)
from crdt_kv.protocol.messages import Abort, Hello, Message, Request

FAST: dict[str, Any] = {
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.2,
    "rng": random.Random(7),
}


@asynccontextmanager
async def chain(stores: list[Store], **kw: Any) -> AsyncIterator[list[Node]]:
    """Serve ``stores`` so that each knows only the next one (A -> B -> C)."""
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        for s in reversed(stores):
            peers = [addr(nodes[0])] if nodes else []
            node = await stack.enter_async_context(
                crdt_kv.serve(s, listen="127.0.0.1:0", peers=peers, **{**FAST, **kw})
            )
            nodes.insert(0, node)
        yield nodes


def fill(store: Store, prefix: str, n: int) -> None:
    with store.batch() as b:
        for i in range(n):
            b.put(f"{prefix}{i:04d}", {"from": store.peer_id, "i": i})


def task_count() -> int:
    """Tasks alive in this trio run (to see that a node leaves none behind)."""
    seen = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        seen += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return seen


# --- convergence --------------------------------------------------------------------


async def test_chain_of_three_converges_with_sync_now(stores: Any) -> None:
    a, b, c = stores("a"), stores("b"), stores("c")
    fill(a, "a", 300)
    fill(b, "b", 200)
    fill(c, "c", 100)
    a.put("shared", "a")
    c.put("shared", "c")  # later stamp: c wins everywhere
    with trio.fail_after(20):
        async with chain([a, b, c], live=False, sync_interval_s=60) as (na, nb, nc):
            assert nc.peers == [] and nb.peers == [addr(nc)] and na.peers == [addr(nb)]
            results = await nb.sync_now()
            assert results == {addr(nc): None}
            assert await na.sync_now() == {addr(nb): None}
            await nb.sync_now()
            assert_converged([a, b, c])
            assert len(a) == 601 and a.get("shared") == "c"
            # A round with nothing new moves no entries.
            before = nb.stats()["c"]["entries_received"]
            await nb.sync_now()
            assert nb.stats()["c"]["entries_received"] == before


async def test_chain_of_three_converges_live(stores: Any) -> None:
    a, b, c = stores("a"), stores("b"), stores("c")
    fill(a, "a", 50)
    fill(c, "c", 50)
    with trio.fail_after(20):
        async with chain([a, b, c], live=True, sync_interval_s=30) as (na, _nb, nc):
            await wait_until(lambda: len(a) == len(c) == 100, what="initial catch-up")
            await wait_until(lambda: na.stats()["b"]["live"], what="a's live session up")
            await wait_until(lambda: nc.stats()["b"]["live"], what="c's live session in")
            a.put("hot", 1)
            await wait_until(lambda: c.get("hot") == 1, what="a -> b -> c live")
            c.put("hot", 2)
            await wait_until(lambda: a.get("hot") == 2, what="c -> b -> a live")
            await wait_until(lambda: a.digest() == b.digest() == c.digest(), what="digests")
            st = na.stats()["b"]
            assert st["live"] and st["connected"]
            assert st["lag_entries"] == 0 and st["lag_seconds"] == 0.0  # tailing
            assert st["cursor"] == b.last_seq
            # One-shot rounds still work next to the live sessions.
            assert await na.sync_now() == {addr(_nb): None}
    assert_converged([a, b, c])


# --- stats ---------------------------------------------------------------------------


async def test_stats_report_cursors_lag_bytes_entries(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    fill(b, "b", 3000)
    fill(a, "a", 10)
    max_lag = 0
    with trio.fail_after(20):
        async with crdt_kv.serve(b, live=False, sync_interval_s=60, **FAST) as nb:
            opts = {"max_batch_entries": 25, "window": 1, "repair": False}  # the log path
            async with crdt_kv.serve(
                a,
                peers=[addr(nb)],
                live=False,
                sync_interval_s=60,
                session_options=opts,
                **FAST,
            ) as na:

                def poll() -> bool:
                    nonlocal max_lag
                    st = na.stats().get("b")
                    if st is not None:
                        max_lag = max(max_lag, st["lag_entries"])
                    return len(a) == 3010

                await wait_until(poll, poll=0.0005, what="a pulled b")
                await wait_until(lambda: na.stats().get("b", {}).get("rounds_completed", 0) >= 1)
                await trio.sleep(0.05)
                st = na.stats()["b"]
                back = nb.stats()["a"]
    assert 0 < max_lag <= 3000
    assert st["peer_id"] == "b" and st["address"] == addr(nb)
    assert st["incarnation"] == b.incarnation.hex()
    assert st["cursor"] == b.last_seq == st["remote_last_seq"]
    assert st["lag_entries"] == 0
    assert st["lag_seconds"] is not None and 0.04 <= st["lag_seconds"] < 10
    assert st["entries_received"] == st["entries_changed"] == 3000
    assert st["entries_sent"] == 10
    # 120 full batches, plus an empty one if a's 10 entries landed in b's log first
    # (never echoed back, but b's log head moved past them).
    assert 3000 // 25 <= st["batches_received"] <= 3000 // 25 + 1
    assert st["bytes_received"] > 3000 * 10 and st["bytes_sent"] > 100
    assert st["errors"] == st["protocol_errors"] == 0
    assert st["sessions"] == st["rounds_completed"] == 1
    assert not st["connected"] and not st["live"] and st["last_sync"] is not None
    # The listener's view mirrors it.
    assert back["cursor"] == 10 and back["entries_received"] == 10
    assert back["entries_sent"] == 3000
    assert back["bytes_received"] == st["bytes_sent"]
    assert back["bytes_sent"] == st["bytes_received"]


async def test_unreachable_peer_counts_errors_by_address(stores: Any) -> None:
    a = stores("a")
    port = free_tcp_port()
    async with crdt_kv.serve(a, peers=[f"127.0.0.1:{port}"], live=False, **FAST) as na:
        await wait_until(lambda: na.stats()[f"127.0.0.1:{port}"]["errors"] >= 2)
        st = na.stats()[f"127.0.0.1:{port}"]
        assert st["peer_id"] is None and "refused" in st["last_error"].lower()
        assert (await na.sync_now())[f"127.0.0.1:{port}"] is not None


# --- events --------------------------------------------------------------------------


async def test_events_via_callbacks_and_async_iteration(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    fill(a, "a", 5)
    seen_a: list[Any] = []
    seen_b: list[Any] = []
    streamed: list[Any] = []
    with trio.fail_after(20):
        async with crdt_kv.serve(b, live=False, sync_interval_s=60, **FAST) as nb:
            for kind in ("connect", "connection", "disconnect", "error", "change"):
                nb.on(kind, seen_b.append)
            async with nb.events() as events:

                async def consume() -> None:
                    async for ev in events:
                        streamed.append(ev)

                async with trio.open_nursery() as n:
                    n.start_soon(consume)
                    async with crdt_kv.serve(a, live=False, sync_interval_s=60, **FAST) as na:
                        for kind in ("connect", "disconnect", "change", "error"):
                            na.on(kind, seen_a.append)
                        na.add_peer(addr(nb))
                        await wait_until(lambda: len(b) == 5)
                        await wait_until(
                            lambda: any(isinstance(e, DisconnectEvent) for e in seen_a)
                        )
                        b.put("back", 1)
                        await na.sync_now()
                        assert a.get("back") == 1
                        # A raw client sending garbage: an error event on b.
                        s = await trio.open_tcp_stream(*nb.address)
                        await s.send_all(raw_frame(b"\x00garbage"))
                        await RawPeer(s).drain()
                        await s.aclose()
                        await wait_until(lambda: any(isinstance(e, ErrorEvent) for e in streamed))
                    n.cancel_scope.cancel()
    kinds_b = [e.kind for e in seen_b]
    assert [e.kind for e in streamed] == kinds_b  # both views see the same sequence
    connection = next(e for e in seen_b if isinstance(e, ConnectionEvent))
    assert connection.peer_id == "a" and connection.address.startswith("127.0.0.1:")
    change = next(e for e in seen_b if isinstance(e, ChangeEvent))
    assert change.peer_id == "a" and change.changed == 5 and change.caught_up
    error = next(e for e in seen_b if isinstance(e, ErrorEvent))
    assert error.peer_id is None and not error.outbound
    assert isinstance(error.error, crdt_kv.ProtocolError)
    connect = next(e for e in seen_a if isinstance(e, ConnectEvent))
    assert connect.peer_id == "b" and connect.address == addr(nb) and not connect.live
    assert any(isinstance(e, ChangeEvent) and e.peer_id == "b" for e in seen_a)
    assert all(e.complete and e.error is None for e in seen_a if isinstance(e, DisconnectEvent))
    assert not any(isinstance(e, ErrorEvent) for e in seen_a)


async def test_failing_callback_is_counted_not_propagated(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    b.put("x", 1)
    async with (
        crdt_kv.serve(b, live=False, **FAST) as nb,
        crdt_kv.serve(a, live=False, sync_interval_s=60, **FAST) as na,
    ):

        def boom(_ev: Any) -> None:
            raise RuntimeError("observer bug")

        na.on("change", boom)
        with pytest.raises(ConfigError, match="unknown event kind"):
            na.on("nope", boom)
        na.add_peer(addr(nb))
        await wait_until(lambda: a.get("x") == 1)
        await wait_until(lambda: na.callback_errors == 1)
        assert na.stats()["b"]["errors"] == 0


# --- hostile clients -----------------------------------------------------------------


async def test_garbage_and_oversized_clients_rejected_while_peer_keeps_syncing(
    stores: Any,
) -> None:
    a, b = stores("a"), stores("b")
    errors: list[ErrorEvent] = []
    with trio.fail_after(20):
        async with chain([a, b], live=True, sync_interval_s=30) as (na, nb):
            nb.on("error", errors.append)
            await wait_until(lambda: na.stats().get("b", {}).get("live", False))
            a.put("before", 1)
            await wait_until(lambda: b.get("before") == 1)

            # 1. garbage before any Hello
            s1 = await trio.open_tcp_stream(*nb.address)
            await s1.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            replies1 = await RawPeer(s1).drain()
            # 2. a valid Hello, then an oversized length prefix
            s2 = await trio.open_tcp_stream(*nb.address)
            p2 = RawPeer(s2)
            await p2.send(hello_for("evil", hlc=b.hlc.now(), receive=False, last_seq=5))
            assert isinstance(await p2.receive(), Hello)
            assert isinstance(await p2.receive(), Request)  # our Hello was accepted
            await p2.send_bytes(b"\x7f\xff\xff\xff" + b"\x00" * 64)
            replies2 = await p2.drain()
            # 3. a malformed batch: nothing of it may land
            s3 = await trio.open_tcp_stream(*nb.address)
            p3 = RawPeer(s3)
            await p3.send(hello_for("evil2", hlc=b.hlc.now(), receive=False, last_seq=1))
            assert isinstance(await p3.receive(), Hello)
            assert isinstance(await p3.receive(), Request)
            rows = [[b"evil", (b.hlc.now() >> 16), 0, 5, cbor2.dumps(1)]]
            await p3.send_bytes(raw_frame(cbor2.dumps([2, 0, 1, True, 0, ["evil2"], rows])))
            replies3 = await p3.drain()
            for s in (s1, s2, s3):
                await s.aclose()

            # Meanwhile the honest peer keeps syncing through the same node.
            a.put("after", 2)
            await wait_until(lambda: b.get("after") == 2, what="live sync after attacks")
            await wait_until(lambda: len(errors) == 3)
            st = nb.stats()
            assert "evil" not in b and b.cursors().keys() == {("a", a.incarnation)}
            assert st[UNIDENTIFIED]["errors"] == 1 and st[UNIDENTIFIED]["protocol_errors"] == 1
            assert st["evil"]["errors"] == st["evil"]["protocol_errors"] == 1
            assert "max_frame_bytes" in st["evil"]["last_error"]
            assert st["evil2"]["errors"] == 1 and "peer index" in st["evil2"]["last_error"]
            assert st["a"]["errors"] == 0 and st["a"]["live"]
    for replies in (replies1, replies2, replies3):
        assert isinstance(replies[-1], Abort), replies
    assert [e.peer_id for e in errors] == [None, "evil", "evil2"]


async def test_silent_client_is_dropped_after_handshake_timeout(stores: Any) -> None:
    b = stores("b")
    errors: list[ErrorEvent] = []
    async with crdt_kv.serve(b, handshake_timeout_s=0.2, **FAST) as nb:
        nb.on("error", errors.append)
        s = await trio.open_tcp_stream(*nb.address)
        with trio.fail_after(5):
            msgs = await RawPeer(s).drain()
        await s.aclose()
        assert isinstance(msgs[0], Hello) and isinstance(msgs[-1], Abort)
        await wait_until(lambda: len(errors) == 1)
        assert "said nothing" in str(errors[0].error)
        assert nb.stats()[UNIDENTIFIED]["errors"] == 1
        assert sum(nb.penalties.offences.values()) == 0  # silence is no offence


async def junk_client(address: tuple[str, int], source: str) -> list[Message]:
    """Connect from ``source``, send bytes that are no frame, read until the node closes."""
    stream = await trio.open_tcp_stream(*address, local_address=source)
    try:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return await RawPeer(stream).drain()
    finally:
        await trio.aclose_forcefully(stream)


async def test_misbehaving_source_is_blocked_unread_and_others_are_not(stores: Any) -> None:
    b = stores("b")
    async with crdt_kv.serve(b, **FAST) as nb:
        # Connecting and closing (a health check) or going away is no offence.
        for _ in range(4):
            s = await trio.open_tcp_stream(*nb.address, local_address="127.0.0.2")
            await s.aclose()
        await wait_until(lambda: nb.admission.inbound == 0)
        assert sum(nb.penalties.offences.values()) == 0
        # Two offences are forgiven (grace), the third blocks the host.
        for _ in range(3):
            replies = await junk_client(nb.address, "127.0.0.2")
            assert isinstance(replies[0], Hello) and isinstance(replies[-1], Abort)
        await wait_until(lambda: nb.penalties.offences["protocol"] == 3)
        accepted = nb.connections_accepted
        assert await junk_client(nb.address, "127.0.0.2") == []  # not even our Hello
        assert nb.penalties.blocked == 1 and nb.connections_accepted == accepted
        # Another source host is served as usual.
        replies = await junk_client(nb.address, "127.0.0.3")
        assert isinstance(replies[0], Hello)


async def test_live_pushes_keep_flowing_while_junk_clients_reconnect(stores: Any) -> None:
    """Issue 12's acceptance test at small scale: 16 hosts reconnecting as fast as they are
    refused must not stop a live peer's pushes, and only they are blocked."""
    a, b = stores("a"), stores("b")
    attempts = [0] * 16
    errors: list[ErrorEvent] = []
    with trio.fail_after(60):
        async with chain([a, b], live=True, sync_interval_s=30) as (na, nb):
            nb.on("error", errors.append)
            await wait_until(lambda: na.stats().get("b", {}).get("live", False))

            async def attacker(i: int) -> None:
                while True:
                    with contextlib.suppress(OSError, trio.TooSlowError):
                        await junk_client(nb.address, f"127.0.0.{2 + i}")
                    attempts[i] += 1
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(attacker, i)
                await wait_until(lambda: min(attempts) >= 3, what="every attacker refused")
                for k in range(40):
                    a.put(f"live{k}", k)
                    await wait_until(lambda k=k: b.get(f"live{k}") == k, what=f"push {k}")
                await wait_until(lambda: nb.penalties.blocked >= 16, what="attackers blocked")
                nursery.cancel_scope.cancel()
            assert min(attempts) >= 4 and nb.penalties.offences["protocol"] >= 16 * 3
            assert len(nb.penalties) == 16
            assert nb.penalties.blocked_for("127.0.0.1", trio.current_time()) == 0
            assert na.stats()["b"]["live"] and na.stats()["b"]["errors"] == 0
            assert nb.stats()["a"]["errors"] == 0 and nb.stats()["a"]["live"]
    assert all(e.peer_id is None for e in errors)


# --- lifecycle -----------------------------------------------------------------------


async def test_leaving_async_with_closes_sockets_and_stops_tasks(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    baseline = task_count()
    disconnects: list[DisconnectEvent] = []
    async with crdt_kv.serve(b, live=True, **FAST) as nb:
        nb.on("disconnect", disconnects.append)
        host, port = nb.address
        async with crdt_kv.serve(a, peers=[addr(nb)], live=True, **FAST) as na:
            await wait_until(lambda: na.stats().get("b", {}).get("live", False))
            a_port = na.address[1]
            assert not tcp_refused(host, a_port)
            events = na.events()
            assert task_count() > baseline
        assert na.closed and tcp_refused(host, a_port)
        with pytest.raises(ClosedError):
            na.add_peer(addr(nb))
        with pytest.raises(ClosedError):
            await na.sync_now()
        assert [e async for e in events] == []  # ends instead of hanging
        await wait_until(lambda: any(e.peer_id == "a" for e in disconnects))
        assert not tcp_refused(host, port)
    assert tcp_refused(host, port)
    assert task_count() == baseline
    assert not a.closed and not b.closed  # the stores belong to the caller


async def test_body_exception_propagates_unwrapped(stores: Any) -> None:
    a = stores("a")
    with pytest.raises(KeyError, match="mine"):
        async with crdt_kv.serve(a, **FAST):
            raise KeyError("mine")


async def test_reconnect_with_backoff_after_peer_comes_back(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    port = free_tcp_port()
    target = f"127.0.0.1:{port}"
    errors: list[tuple[float, ErrorEvent]] = []
    connects: list[ConnectEvent] = []
    with trio.fail_after(25):
        async with crdt_kv.serve(
            a,
            peers=[target],
            live=True,
            sync_interval_s=30,
            backoff_base_s=0.1,
            backoff_max_s=0.4,
            rng=random.Random(3),
        ) as na:
            na.on("error", lambda e: errors.append((trio.current_time(), e)))
            na.on("connect", connects.append)
            await trio.sleep(1.5)
            # Two dialers (live and rounds) back off: a handful of attempts, not a storm.
            assert 4 <= len(errors) <= 24, len(errors)
            gaps = [t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(errors)]
            assert max(gaps) >= 0.1
            assert na.stats()[target]["errors"] >= len(errors)
            b.put("from b", 1)
            async with crdt_kv.serve(b, listen=target, live=True, **FAST):
                await wait_until(lambda: a.get("from b") == 1, what="sync after b appeared")
                await wait_until(lambda: na.stats()["b"]["live"])
            # b went away; a notices, retries, and resumes when b is back.
            await wait_until(lambda: not na.stats()["b"]["live"])
            b.put("while away", 2)
            n_connects = len(connects)
            async with crdt_kv.serve(b, listen=target, live=True, **FAST):
                await wait_until(lambda: a.get("while away") == 2, what="resync on return")
                await wait_until(lambda: na.stats()["b"]["live"])
                b.put("live again", 3)
                await wait_until(lambda: a.get("live again") == 3, what="live after return")
            assert len(connects) > n_connects
    st_cursor = a.cursor("b", b.incarnation)
    assert st_cursor == b.last_seq


async def test_add_peer_validates_and_ignores_duplicates_and_self(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    async with (
        crdt_kv.serve(b, live=False, **FAST) as nb,
        crdt_kv.serve(a, live=False, **FAST) as na,
    ):
        assert na.add_peer(addr(nb)) is True
        assert na.add_peer(addr(nb)) is False
        assert na.add_peer(addr(na)) is False
        with pytest.raises(ConfigError):
            na.add_peer("no-port")
        assert na.peers == [addr(nb)]
        assert na.remove_peer(addr(nb)) is True and na.peers == []


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ("x", "h:", "h:-1", "h:70000", ":x"):
        with pytest.raises(ConfigError):
            parse_address(bad)


async def test_self_connection_is_refused(stores: Any) -> None:
    a = stores("a")
    async with crdt_kv.serve(a, live=False, sync_interval_s=60, **FAST) as na:
        # Ourselves under another name than the listen address: only the Hello tells.
        alias = f"localhost:{na.address[1]}"
        assert na.add_peer(alias)
        result = await na.sync_now()
        assert isinstance(result[alias], crdt_kv.RemoteProtocolError)
        assert "our own" in str(result[alias])
        assert a.cursors() == {}


# --- backoff -------------------------------------------------------------------------


def test_backoff_grows_caps_jitters_and_resets() -> None:
    b = Backoff(base=0.2, factor=2.0, maximum=3.0, jitter=0.5, rng=random.Random(5))
    delays = [b.next() for _ in range(12)]
    caps = [min(3.0, 0.2 * 2**i) for i in range(12)]
    for d, cap in zip(delays, caps, strict=True):
        assert cap * 0.5 < d <= cap
    assert b.attempts == 12
    b.reset()
    assert 0.1 < b.next() <= 0.2
    same = Backoff(base=0.2, factor=2.0, maximum=3.0, jitter=0.5, rng=random.Random(5))
    assert [same.next() for _ in range(12)] == delays  # replayable from the seed


def test_backoff_never_overflows() -> None:
    b = Backoff(base=0.1, factor=1e10, maximum=5.0, jitter=0.0)
    assert [b.next() for _ in range(100)][1:] == [5.0] * 99
    b = Backoff(base=1.0, factor=1.0, maximum=1.0, jitter=0.0)
    b.attempts = 10**9
    assert b.next() == 1.0


@pytest.mark.parametrize(
    "kw",
    [{"base": 0}, {"base": 2, "maximum": 1}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}],
)
def test_backoff_validates(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kw)


# --- clock skew ----------------------------------------------------------------------


async def test_peer_with_fast_clock_is_refused_and_reported(tmp_path: Path) -> None:
    def fast_clock() -> int:
        return int(time.time() * 1000) + 3_600_000

    fast = crdt_kv.open(tmp_path / "fast", backend="rocksdb", peer_id="fast", clock=fast_clock)
    b = crdt_kv.open(tmp_path / "b", backend="rocksdb", peer_id="b")
    fast.put("k", "wins forever?")
    b.put("k", "honest")
    errors: list[ErrorEvent] = []
    try:
        async with crdt_kv.serve(b, live=False, **FAST) as nb:
            nb.on("error", errors.append)
            async with crdt_kv.serve(fast, live=False, sync_interval_s=60, **FAST) as nf:
                nf.add_peer(addr(nb))
                result = await nf.sync_now()
                await wait_until(lambda: len(errors) >= 1)
            stats = nb.stats()
        b_value, b_cursors = b.get("k"), b.cursors()
    finally:
        fast.close()
        b.close()
    assert isinstance(result[addr(nb)], crdt_kv.ProtocolError)  # told by b's Abort
    assert isinstance(errors[0].error, crdt_kv.ClockSkewError)
    assert "'fast'" in str(errors[0].error)  # the message names the peer
    # The Hello itself carried the fast stamp: the refusal is counted under the peer id
    # the Hello claimed, and the error event names it.
    assert UNIDENTIFIED not in stats and errors[0].peer_id == "fast"
    st = stats["fast"]
    # One refusal per attempt (sync_now and the first periodic round may both dial).
    assert st["skew_rejected"] == st["errors"] == st["protocol_errors"] >= 1
    assert "'fast'" in st["last_error"]
    assert b_value == "honest" and b_cursors == {}


async def test_busy_writer_does_not_defeat_backoff_to_dead_peer(stores: Any) -> None:
    """Local commits speed up rounds with a healthy peer, never redials of a dead one."""
    a = stores("a")
    dead = f"127.0.0.1:{free_tcp_port()}"
    attempts: list[float] = []
    async with crdt_kv.serve(
        a,
        peers=[dead],
        live=False,
        sync_interval_s=1.0,
        min_sync_interval_s=0.05,
        backoff_base_s=0.4,
        backoff_max_s=0.8,
        rng=random.Random(2),
    ) as na:
        na.on("error", lambda _e: attempts.append(trio.current_time()))
        with trio.move_on_after(2.5):
            for i in itertools.count():
                a.put(f"k{i}", i)
                await trio.sleep(0.01)
    # Delays 0.2-0.4, 0.4-0.8, then 0.4-0.8 each: at most 6 dials in 2.5 s, not 50.
    assert 2 <= len(attempts) <= 7, [round(t - attempts[0], 2) for t in attempts]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.19


async def test_local_failure_ends_one_session_not_the_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A resolver that raises (a user bug) fails the session that met the tie; the node
    keeps serving other peers and reports the failure."""
    now = int(time.time() * 1000)

    def clock() -> int:
        return now  # frozen: a's and b's writes of "tie" get equal stamps

    def buggy(_x: Any, _y: Any) -> bool:
        raise RuntimeError("resolver bug")

    a = crdt_kv.open(tmp_path / "a", backend="rocksdb", peer_id="a", clock=clock)
    b = crdt_kv.open(tmp_path / "b", backend="rocksdb", peer_id="b", clock=clock, resolver=buggy)
    c = crdt_kv.open(tmp_path / "c", backend="rocksdb", peer_id="c")
    errors: list[ErrorEvent] = []
    try:
        a.put("tie", 1)
        b.put("tie", 2)
        c.put("from c", 3)
        async with crdt_kv.serve(b, live=False, sync_interval_s=60, **FAST) as nb:
            nb.on("error", errors.append)
            async with crdt_kv.serve(a, live=False, sync_interval_s=60, **FAST) as na:
                na.add_peer(addr(nb))
                result = await na.sync_now()
            assert isinstance(result[addr(nb)], crdt_kv.ProtocolError)  # b aborted
            await wait_until(lambda: len(errors) >= 1)
            async with crdt_kv.serve(c, live=False, sync_interval_s=60, **FAST) as nc:
                nc.add_peer(addr(nb))
                assert await nc.sync_now() == {addr(nb): None}
            assert b.get("from c") == 3 and c.get("tie") == 2
            st = nb.stats()["a"]
        assert isinstance(errors[0].error, RuntimeError) and errors[0].peer_id == "a"
        # The resolver's error is not a protocol error. (a's node may dial again before it
        # shuts down; that session can end with a's shutdown abort, a protocol error.)
        assert st["errors"] - st["protocol_errors"] >= 1
        assert "resolver bug" in caplog.text
    finally:
        for s in (a, b, c):
            s.close()


# --- more lifecycle ------------------------------------------------------------------


async def test_slow_event_consumer_loses_newest_events_counted(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    async with crdt_kv.serve(b, live=False, sync_interval_s=60, **FAST) as nb:
        events = nb.events(buffer=2)
        async with crdt_kv.serve(a, live=False, sync_interval_s=60, **FAST) as na:
            na.add_peer(addr(nb))
            for i in range(3):
                a.put(f"k{i}", i)
                await na.sync_now()
        await wait_until(lambda: events.dropped > 0)
        kept = [events._recv.receive_nowait() for _ in range(2)]
        assert kept[0].kind == "connection"  # the oldest ones are kept
        await events.aclose()
        assert [e async for e in events] == []


async def test_remove_peer_ends_its_live_session(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    async with chain([a, b], live=True, sync_interval_s=30) as (na, nb):
        await wait_until(lambda: nb.stats().get("a", {}).get("live", False))
        assert na.remove_peer(addr(nb)) is True
        await wait_until(lambda: not nb.stats()["a"]["connected"], what="b saw a leave")
        assert na.peers == [] and na.remove_peer(addr(nb)) is False
        b.put("after removal", 1)
        await trio.sleep(0.3)
        assert "after removal" not in a


async def test_recreated_peer_is_pulled_from_zero(stores: Any, tmp_path: Path) -> None:
    """A peer whose store was recreated (new incarnation, same peer id) reuses sequence
    numbers: its old cursor must not skip the new life's entries."""
    a = stores("a")
    b1 = crdt_kv.open(tmp_path / "b1", backend="rocksdb", peer_id="b")
    fill(b1, "old", 50)
    async with crdt_kv.serve(a, live=False, sync_interval_s=60, **FAST) as na:
        async with crdt_kv.serve(b1, live=False, **FAST) as nb:
            na.add_peer(addr(nb))
            await na.sync_now()
            listen = addr(nb)
        b1.close()
        assert na.stats()["b"]["cursor"] == 50
        b2 = crdt_kv.open(tmp_path / "b2", backend="rocksdb", peer_id="b")  # a new life
        fill(b2, "new", 10)
        try:
            async with crdt_kv.serve(b2, listen=listen, live=False, **FAST):
                assert (await na.sync_now()) == {listen: None}
                st = na.stats()["b"]
            assert st["incarnation"] == b2.incarnation.hex()
            # The new life was read from 0 (the old cursor 50 would have skipped it all).
            assert st["cursor"] >= 10 and st["cursor"] == a.cursor("b", b2.incarnation)
            assert len([k for k in a if k.startswith("new")]) == 10
            assert b2.get("old0000") is not None  # and the old life's data came back to b
        finally:
            b2.close()


async def test_live_session_failing_after_handshake_still_backs_off(stores: Any) -> None:
    """A peer that completes the handshake and then breaks the protocol every time must
    not be redialed at the base delay forever (each attempt may resend batches)."""
    a = stores("a")
    a.put("k", 1)
    accepted: list[float] = []

    async def broken_peer(stream: trio.SocketStream) -> None:
        accepted.append(trio.current_time())
        peer = RawPeer(stream)
        await peer.receive()
        await peer.send(hello_for("broken", hlc=a.hlc.now(), live=True))
        await peer.send_bytes(raw_frame(b"\xff"))
        await peer.drain()
        await stream.aclose()

    async with trio.open_nursery() as n:
        listeners = await n.start(
            functools.partial(trio.serve_tcp, broken_peer, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        async with crdt_kv.serve(
            a,
            peers=[f"127.0.0.1:{port}"],
            live=True,
            sync_interval_s=60,
            backoff_base_s=0.1,
            backoff_max_s=1.0,
            rng=random.Random(4),
        ) as na:
            await trio.sleep(2.0)
            st = na.stats()["broken"]
        n.cancel_scope.cancel()
    # Delays 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.5-1: about 6 dials in 2 s, not 20+.
    assert 3 <= len(accepted) <= 8, len(accepted)
    assert st["errors"] == st["protocol_errors"] == len(accepted)


async def test_live_node_does_not_hammer_a_non_live_peer(stores: Any) -> None:
    """Against a peer with live=False every live session completes at once; redialing it
    at the base delay would be a full round every ~0.1 s."""
    a, b = stores("a"), stores("b")
    connections: list[ConnectionEvent] = []
    async with crdt_kv.serve(b, live=False, sync_interval_s=60, **FAST) as nb:
        nb.on("connection", connections.append)
        async with crdt_kv.serve(
            a,
            peers=[addr(nb)],
            live=True,
            sync_interval_s=60,
            backoff_base_s=0.1,
            backoff_max_s=1.0,
            rng=random.Random(4),
        ):
            b.put("k", 1)
            await wait_until(lambda: a.get("k") == 1)
            await trio.sleep(2.0)
    assert 3 <= len(connections) <= 9, len(connections)


# --- chaos ---------------------------------------------------------------------------


async def run_chaos(tmp_path: Path, *, seconds: float, seed: int) -> None:
    """Nodes of an A-B-C chain stop and restart at random while writers keep writing the
    same keys (offline too); once all run again, every replica holds the model's winners.
    """
    rng = random.Random(seed)
    peers = ["a", "b", "c"]
    ports = {p: free_tcp_port() for p in peers}
    listen = {p: f"127.0.0.1:{ports[p]}" for p in peers}
    next_peer = {"a": [listen["b"]], "b": [listen["c"]], "c": []}
    dbs = {p: crdt_kv.open(tmp_path / f"chaos-{p}", backend="rocksdb", peer_id=p) for p in peers}
    model = Model()
    up = dict.fromkeys(peers, False)
    try:

        async def lifecycle(p: str, stop: trio.Event) -> None:
            while not stop.is_set():
                with trio.move_on_after(rng.uniform(0.2, 0.8)):
                    async with crdt_kv.serve(
                        dbs[p],
                        listen=listen[p],
                        peers=next_peer[p],
                        live=True,
                        sync_interval_s=0.5,
                        rng=random.Random(rng.random()),
                        backoff_base_s=0.02,
                        backoff_max_s=0.1,
                        session_options={"max_batch_entries": 20},
                    ):
                        up[p] = True
                        await stop.wait()
                up[p] = False
                if not stop.is_set():
                    await trio.sleep(rng.uniform(0.05, 0.3))
            async with crdt_kv.serve(
                dbs[p],
                listen=listen[p],
                peers=next_peer[p],
                live=True,
                sync_interval_s=0.2,
                backoff_base_s=0.02,
                backoff_max_s=0.1,
            ):
                up[p] = True
                await trio.sleep_forever()

        stop = trio.Event()
        async with trio.open_nursery() as n:
            for p in peers:
                n.start_soon(lifecycle, p, stop)
            with trio.move_on_after(seconds):
                while True:
                    db = dbs[rng.choice(peers)]
                    key = f"k{rng.randrange(40)}"
                    if rng.random() < 0.15:
                        model.delete(db, key)
                    else:
                        model.put(db, key, rng.randrange(10**6))
                    await trio.sleep(rng.uniform(0, 0.01))
            stop.set()
            await wait_until(lambda: all(up.values()), timeout=10, what=f"all up (seed {seed})")
            await wait_until(
                lambda: len({db.digest() for db in dbs.values()}) == 1,
                timeout=20,
                what=f"convergence after chaos (seed {seed})",
            )
            n.cancel_scope.cancel()
        for db in dbs.values():
            assert_matches_model(db, model)
    finally:
        for db in dbs.values():
            db.close()


async def test_chaos_restarts_converge(tmp_path: Path) -> None:
    await run_chaos(tmp_path, seconds=3.0, seed=11)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(5))
async def test_chaos_restarts_converge_soak(tmp_path: Path, seed: int) -> None:
    await run_chaos(tmp_path, seconds=30.0, seed=seed)


async def test_inbound_connection_flood_is_capped_and_peers_keep_syncing(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    async with chain([a, b], live=False, sync_interval_s=60) as (na, nb):
        await wait_until(lambda: na.stats().get("b", {}).get("rounds_completed", 0) >= 1)
        await wait_until(lambda: nb.admission.inbound == 0)
        base = nb.connections_accepted
        nb.admission.max_inbound = 3
        silent = [await trio.open_tcp_stream(*nb.address) for _ in range(3)]
        await wait_until(lambda: nb.connections_accepted == base + 3)
        extra = await trio.open_tcp_stream(*nb.address)
        assert await RawPeer(extra).drain() == []  # closed without a word
        await wait_until(lambda: nb.connections_refused == 1)
        # Our own dials still work while the slots are taken.
        b.put("k", 1)
        c = stores("c")
        async with crdt_kv.serve(c, live=False, sync_interval_s=60, **FAST) as nc:
            nb.add_peer(addr(nc))
            assert (await nb.sync_now())[addr(nc)] is None
        assert c.get("k") == 1
        for s in [*silent, extra]:
            await s.aclose()
        # Slots free up again: a peer can connect in.
        await wait_until(lambda: nb.admission.inbound == 0)
        assert await na.sync_now() == {addr(nb): None}
        assert a.get("k") == 1


# --- TLS via wrap_stream -------------------------------------------------------------


async def test_nodes_replicate_over_tls_with_wrap_stream(stores: Any) -> None:
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    def tls(stream: trio.abc.Stream, outbound: bool) -> trio.abc.Stream:
        if outbound:
            return trio.SSLStream(stream, client_ctx, server_hostname="127.0.0.1")
        return trio.SSLStream(stream, server_ctx, server_side=True)

    a, b, c = stores("a"), stores("b"), stores("c")
    fill(a, "a", 100)
    fill(c, "c", 100)
    with trio.fail_after(20):
        async with chain([a, b, c], live=True, sync_interval_s=30, wrap_stream=tls) as nodes:
            na, nb, _nc = nodes
            await wait_until(lambda: len(a) == len(c) == 200, what="catch-up over TLS")
            await wait_until(lambda: na.stats()["b"]["live"], what="live over TLS")
            a.put("secret", 1)
            await wait_until(lambda: c.get("secret") == 1, what="live relay over TLS")
            assert await na.sync_now() == {addr(nb): None}
            # A plaintext client cannot talk to a TLS node: its bytes are not a handshake.
            plain = await trio.open_tcp_stream(*nb.address)
            await RawPeer(plain).send(hello_for("plain", hlc=b.hlc.now()))
            with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
                while await plain.receive_some():
                    pass  # a TLS alert at most, then the node hangs up
            await plain.aclose()
            await wait_until(lambda: nb.stats().get(UNIDENTIFIED, {}).get("errors", 0) >= 1)
            assert "plain" not in nb.stats()
    assert_converged([a, b, c])


# --- fair slots (crdt_kv/net/admission.py) ---------------------------------------------


async def test_live_hello_then_silence_frees_its_slot(stores: Any) -> None:
    b = stores("b")
    async with crdt_kv.serve(b, live_idle_timeout_s=0.3, **FAST) as nb:
        s = await trio.open_tcp_stream(*nb.address)
        peer = RawPeer(s)
        await peer.send(hello_for("mute", hlc=b.hlc.now(), send=False, live=True))
        assert isinstance(await peer.receive(), Hello)
        await peer.send(Request(0, True))  # now tailed live; then never a word again
        await wait_until(lambda: nb.admission.inbound == 1)
        replies = await peer.drain(timeout=5)
        await wait_until(lambda: nb.admission.inbound == 0)
        assert any(isinstance(m, Abort) and "idle" in m.reason for m in replies), replies
        await s.aclose()


async def test_second_session_of_a_peer_id_is_refused_and_counted(stores: Any) -> None:
    b = stores("b")
    async with crdt_kv.serve(b, **FAST) as nb:
        first = RawPeer(await trio.open_tcp_stream(*nb.address))
        await first.send(hello_for("twin", hlc=b.hlc.now(), send=False, live=True))
        assert isinstance(await first.receive(), Hello)
        await wait_until(lambda: nb.admission.pending == 0)
        second = RawPeer(await trio.open_tcp_stream(*nb.address))
        await second.send(hello_for("twin", hlc=b.hlc.now(), send=False, live=True))
        replies = await second.drain()
        assert isinstance(replies[-1], Abort), replies
        assert "already has an established live session" in replies[-1].reason
        assert nb.admission.refused["duplicate"] == 1 and nb.connections_refused == 1
        # A one-shot round of the same peer (sync_now beside a live session) is let in.
        third = RawPeer(await trio.open_tcp_stream(*nb.address))
        await third.send(hello_for("twin", hlc=b.hlc.now(), send=False))
        assert isinstance(await third.receive(), Hello)
        for p in (first, second, third):
            await p.stream.aclose()


async def test_unidentified_connections_cannot_take_every_slot(stores: Any) -> None:
    a, b = stores("a"), stores("b")
    async with crdt_kv.serve(b, live=False, sync_interval_s=60, **FAST) as nb:
        nb.admission.max_pending = 2
        silent = [await trio.open_tcp_stream(*nb.address) for _ in range(2)]
        await wait_until(lambda: nb.admission.pending == 2)
        b.put("k", 1)
        async with crdt_kv.serve(a, live=False, sync_interval_s=60, peers=[addr(nb)], **FAST) as na:
            assert (await na.sync_now())[addr(nb)] is None  # an identified peer gets in
        assert a.get("k") == 1
        assert nb.admission.refused["evicted"] >= 1
        dropped = await RawPeer(silent[0]).drain()  # the oldest: our Hello, then an Abort
        assert isinstance(dropped[-1], Abort)
        for s in silent:
            await s.aclose()
