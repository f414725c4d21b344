"""The node-wide byte budget (crdt_kv/net/budget.py): unit rules, and a node whose budget
is spent by connections pinning partial frames keeps syncing a real live peer."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
from net_helpers import RawPeer, addr, hello_for, wait_until

import crdt_kv
from crdt_kv import ConfigError
from crdt_kv.net.budget import FLOOR_BYTES, ByteBudget
from crdt_kv.net.driver import RECEIVE_SIZE
from crdt_kv.protocol.messages import Hello, Request
from crdt_kv.protocol.sending import FIRST_BATCH_BYTES


async def test_read_size_under_the_limit_is_what_was_asked() -> None:
    budget = ByteBudget(1 << 20)
    held = {"a": 0}
    budget.register(lambda: held["a"])
    assert await budget.read_size(lambda: held["a"], 4096) == 4096
    held["a"] = 900_000
    assert await budget.read_size(lambda: held["a"], 100_000) == 100_000


async def test_spent_budget_lets_small_holders_read_up_to_the_floor_only() -> None:
    budget = ByteBudget(1 << 20, floor=64 << 10)
    big = budget.register(lambda: 1 << 20)
    small = 10 << 10
    assert await budget.read_size(lambda: small, 1 << 18) == (64 << 10) - small
    budget.unregister(big)
    assert await budget.read_size(lambda: small, 1 << 18) == 1 << 18


async def test_spent_budget_stops_big_holders_until_bytes_are_released() -> None:
    budget = ByteBudget(1 << 20, floor=64 << 10)
    other = {"held": 1 << 20}
    budget.register(lambda: other["held"])
    got: list[int] = []

    async def reader() -> None:
        got.append(await budget.read_size(lambda: 128 << 10, 1 << 16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and budget.waits == 1
        budget.released()  # nothing changed: it is not even woken
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and budget.waits == 1
        other["held"] = 0
        budget.released()
    assert got == [1 << 16]


async def test_a_release_wakes_only_waiters_it_has_room_for_oldest_first() -> None:
    budget = ByteBudget(1 << 20, floor=64 << 10)
    calls = {"n": 0}
    other = {"held": 1 << 20}

    def pinned() -> int:
        calls["n"] += 1
        return 128 << 10  # over the floor: waits while the budget is spent

    for _ in range(50):
        budget.register(pinned)
    budget.register(lambda: other["held"])
    got: list[int] = []

    async def reader(i: int) -> None:
        await budget.read_size(pinned, 1 << 18)
        got.append(i)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(reader, i)
                await trio.testing.wait_all_tasks_blocked()
            assert budget.waits == 3
            other["held"] = (1 << 20) - 50 * (128 << 10) - (1 << 18)  # room for one read
            calls["n"] = 0
            for _ in range(10):  # releases in one tick are coalesced into one sweep
                budget.released()
            await trio.testing.wait_all_tasks_blocked()
            assert calls["n"] <= 50 + 3  # one sum over the holders, one look per waiter
            assert got == [0]
            other["held"] = -(8 << 20)
            budget.released()
    assert got[0] == 0 and sorted(got) == [0, 1, 2] and budget.waits == 3


async def test_newcomers_queue_behind_waiters_without_summing_every_holder() -> None:
    budget = ByteBudget(1 << 20, floor=64 << 10)
    calls = {"n": 0}
    other = {"held": 1 << 20}

    def counted() -> int:
        calls["n"] += 1
        return other["held"]

    budget.register(counted)
    got: list[int] = []

    async def reader() -> None:
        got.append(await budget.read_size(lambda: 128 << 10, 1 << 16))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            calls["n"] = 0
            for _ in range(5):
                nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert calls["n"] <= 1 and budget.waits == 6 and got == []
            # A small holder still reads up to its floor at once.
            assert await budget.read_size(lambda: 10 << 10, 1 << 18) == 54 << 10
            other["held"] = 0
            budget.released()
    assert got == [1 << 16] * 6


def test_unregister_is_idempotent_and_a_limit_below_the_floor_is_refused() -> None:
    budget = ByteBudget(1 << 20)
    token = budget.register(lambda: 5)
    assert budget.held == 5
    budget.unregister(token)
    budget.unregister(token)
    assert budget.held == 0
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        ByteBudget(FLOOR_BYTES - 1)


async def test_serve_refuses_a_budget_below_the_floor(stores: Any) -> None:
    with pytest.raises(ConfigError, match="max_buffered_bytes"):
        async with crdt_kv.serve(stores("b"), max_buffered_bytes=1000):
            pass


def _batch_start(announced: int) -> bytes:
    """The first bytes of a batch frame of ``announced`` bytes whose one row's value fills
    it: valid as far as it goes, so the node cannot refuse it before it is complete."""
    head = b"\x87\x02\x00\x01\xf4\x00\x81\x61a\x81\x85\x41k\x00\x00\x00\x5a"
    return struct.pack(">I", announced) + head + struct.pack(">I", announced - len(head) - 4)


async def _pin(address: tuple[str, int], name: str, hlc: int, announced: int, sent: int) -> RawPeer:
    """A raw peer that says a valid Hello, then starts a frame of ``announced`` bytes and
    sends ``sent`` of them, pinning them in the node's buffer."""
    peer = RawPeer(await trio.open_tcp_stream(*address))
    await peer.send(hello_for(name, hlc=hlc, send=False, live=True))
    assert isinstance(await peer.receive(), Hello)
    start = _batch_start(announced)
    await peer.send_bytes(start)
    with trio.move_on_after(0.5):  # the node stops reading once its budget is spent
        await peer.send_bytes(b"\x00" * (sent - len(start)))
    return peer


async def test_pinned_partial_frames_stay_within_the_budget_and_live_sync_goes_on(
    stores: Any,
) -> None:
    a, b = stores("a"), stores("b")
    limit = 2 << 20
    opts: dict[str, Any] = {"backoff_base_s": 0.05, "backoff_max_s": 0.2}
    async with crdt_kv.serve(b, max_buffered_bytes=limit, live_idle_timeout_s=2.0, **opts) as nb:
        pins = [await _pin(nb.address, f"pin{i}", b.hlc.now(), 4 << 20, 3 << 20) for i in range(4)]
        await wait_until(lambda: nb.budget.waits > 0, what="a connection waiting for room")
        bound = limit + len(pins) * (FLOOR_BYTES + RECEIVE_SIZE)
        assert nb.budget.held <= bound
        async with crdt_kv.serve(a, peers=[addr(nb)], **opts) as na:
            await wait_until(lambda: bool(na.peer_book.records), what="a session")
            for i in range(20):
                a.put(f"k{i}", i)
                await wait_until(lambda i=i: b.get(f"k{i}") == i, timeout=5, what="live push")
            assert nb.budget.held <= bound
            # The pins complete no frame: their idle timeout drops them and frees the budget.
            await wait_until(lambda: nb.budget.held < FLOOR_BYTES, timeout=10, what="pins dropped")
        for p in pins:
            await p.stream.aclose()


async def test_a_peer_that_stops_reading_holds_what_the_budget_allows_and_is_dropped(
    stores: Any,
) -> None:
    b = stores("b")
    with b.batch() as w:  # about 12 MB to send
        for i in range(6000):
            w.put(f"k{i:05d}", "x" * 2000)
    limit = 1 << 20
    async with crdt_kv.serve(
        b, max_buffered_bytes=limit, idle_timeout_s=1.5, live_idle_timeout_s=1.5
    ) as nb:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect(nb.address)
        peer = RawPeer(trio.SocketStream(sock))
        await peer.send(hello_for("mute", hlc=b.hlc.now(), send=False))
        assert isinstance(await peer.receive(), Hello)
        await peer.send(Request(0, False))  # ask for everything, then never read again
        most = 0
        with trio.move_on_after(10):
            while nb.admission.inbound:
                most = max(most, nb.budget.held)
                await trio.sleep(0.01)
        assert nb.admission.inbound == 0, "a peer that reads nothing must be dropped"
        # One batch (1 MiB) over the budget at most, and the 4 batches of the window never.
        assert most <= limit + (1 << 20) + FLOOR_BYTES, most
        await peer.stream.aclose()


async def test_readers_that_never_ack_hold_a_first_window_each_not_the_budget(
    stores: Any,
) -> None:
    """Eight peers ask for the whole log (12 MB) and never read or ack: each gets a window
    of first batches (4 x 64 KiB), so together they hold about 2 MiB of an 8 MiB budget
    (with 1 MiB batches, 32 MiB: the budget spent, and every connection holding 64 KiB
    or more stopped reading)."""
    b = stores("b")
    with b.batch() as w:
        for i in range(6000):
            w.put(f"k{i:05d}", "x" * 2000)
    limit = 8 << 20
    async with crdt_kv.serve(b, max_buffered_bytes=limit) as nb:
        peers = []
        for i in range(8):
            sock = trio.socket.socket()
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
            await sock.connect(nb.address)
            peer = RawPeer(trio.SocketStream(sock))
            await peer.send(hello_for(f"mute{i}", hlc=b.hlc.now(), send=False))
            assert isinstance(await peer.receive(), Hello)
            await peer.send(Request(0, False))
            peers.append(peer)
        most = 0
        with trio.move_on_after(1.5):
            while True:
                most = max(most, nb.budget.held)
                await trio.sleep(0.01)
        window = 4 * (FIRST_BATCH_BYTES + 2100)
        assert 0 < most <= 8 * window + FLOOR_BYTES, most
        assert nb.budget.waits == 0
        for p in peers:
            await p.stream.aclose()


async def test_report_keeps_the_total_without_summing_and_wakes_waiters_on_a_release() -> None:
    budget = ByteBudget(1 << 20, floor=64 << 10)
    calls = {"n": 0}
    sizes = {"a": 1 << 20, "b": 0}

    def held_a() -> int:
        calls["n"] += 1
        return sizes["a"]

    a = budget.register(held_a)
    budget.register(lambda: sizes["b"])
    for i in range(100):  # the other holders are never asked again
        sizes["b"] = i
        budget.register(lambda: 0)
    calls["n"] = 0
    assert budget.held == (1 << 20) + 0
    got: list[int] = []

    async def reader() -> None:
        got.append(await budget.read_size(lambda: 128 << 10, 1 << 16))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and budget.waits == 1 and calls["n"] == 0
            sizes["a"] = 1 << 19
            budget.report(a)  # one holder asked, the total moves by its difference
            assert calls["n"] == 1 and budget.held == 1 << 19
    assert got == [1 << 16]
    budget.unregister(a)
    budget.report(a)  # unregistered: ignored
    assert budget.held == 0 and calls["n"] == 1


async def test_a_sweep_stops_at_the_oldest_waiter_there_is_no_room_for() -> None:
    budget = ByteBudget(1 << 20, floor=64 << 10)
    other = {"held": 1 << 20}
    token = budget.register(lambda: other["held"])
    looks = {"n": 0}

    def pinned() -> int:
        looks["n"] += 1
        return 128 << 10

    got: list[str] = []

    async def reader(name: str, want: int) -> None:
        await budget.read_size(pinned, want)
        got.append(name)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, "big", 1 << 18)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(20):
                nursery.start_soon(reader, f"small{i}", 1 << 10)
            await trio.testing.wait_all_tasks_blocked()
            looks["n"] = 0
            other["held"] = (1 << 20) - (1 << 16)  # room for the small ones, not the big
            budget.report(token)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # oldest first: none gets past the big one
            other["held"] = 0
            budget.report(token)
    assert sorted(got) == sorted(["big", *(f"small{i}" for i in range(20))])


async def test_a_queued_waiter_whose_bytes_were_applied_gets_its_floor_behind_a_stuck_one() -> None:
    k = 1 << 10
    budget = ByteBudget(256 * k, floor=64 * k)
    pinned = {"a": 100 * k, "b": 100 * k, "c": 200 * k}
    tokens = {n: budget.register(lambda n=n: pinned[n]) for n in pinned}  # 400 KiB held
    got: dict[str, int] = {}

    async def read(name: str) -> None:
        got[name] = await budget.read_size(lambda: pinned[name], 64 * k)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "a")  # holds 100 KiB: waits for room
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read, "b")  # queues behind it
            await trio.testing.wait_all_tasks_blocked()
            assert got == {}
            pinned["b"] = 0  # b's frame was applied: it holds nothing now
            budget.report(tokens["b"])
            await trio.testing.wait_all_tasks_blocked()
            assert got == {"b": 64 * k}  # what a newcomer holding nothing gets at once
            pinned["c"] = 0
            budget.report(tokens["c"])
    assert got == {"a": 64 * k, "b": 64 * k}


async def test_a_waiter_with_a_token_is_swept_by_its_reported_size_without_calling_it() -> None:
    k = 1 << 10
    budget = ByteBudget(256 * k, floor=64 * k)
    pinned = {"a": 100 * k, "b": 100 * k, "c": 200 * k, "d": 10 * k}
    tokens = {n: budget.register(lambda n=n: pinned[n]) for n in pinned}
    calls = {"a": 0, "b": 0}
    got: dict[str, int] = {}

    async def read(name: str) -> None:
        def held() -> int:
            calls[name] += 1
            return pinned[name]

        got[name] = await budget.read_size(held, 64 * k, token=tokens[name])

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "a")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read, "b")
            await trio.testing.wait_all_tasks_blocked()
            assert calls == {"a": 1, "b": 1}  # once each, on asking
            pinned["b"] = 0  # applied, but not reported yet: the sweep does not know
            pinned["d"] = 5 * k
            budget.report(tokens["d"])  # a sweep runs, and finds no room
            await trio.testing.wait_all_tasks_blocked()
            assert got == {}
            budget.report(tokens["b"])
            await trio.testing.wait_all_tasks_blocked()
            assert got == {"b": 64 * k}
            pinned["c"] = 0
            budget.report(tokens["c"])
    assert got == {"a": 64 * k, "b": 64 * k}
    assert calls == {"a": 1, "b": 1}  # sweeps took the reported sizes
