"""``serve(catch_up=True)`` over real loopback TCP: entering the context waits for one
pull from every peer, bounded by the timeout (crdt_kv/net/catchup.py)."""

from __future__ import annotations

import functools
import math
import random
from typing import Any

import pytest
import trio
from net_helpers import addr, free_tcp_port

import crdt_kv
from crdt_kv import CatchUpReport, ConfigError
from crdt_kv.net.discovery import Announcement

FAST: dict[str, Any] = {
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.2,
    "rng": random.Random(3),
}


async def silent_listener(nursery: trio.Nursery, hold_s: float) -> str:
    """A TCP listener that accepts and says nothing for ``hold_s`` (then hangs up)."""

    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep(hold_s)
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_restarted_node_holds_what_it_missed_on_entry(stores: Any) -> None:
    a = stores("a")
    b = stores("b")
    async with crdt_kv.serve(b, **FAST) as nb:
        async with crdt_kv.serve(a, peers=[addr(nb)], **FAST) as na:
            a.put("before", 1)
            with trio.fail_after(10):
                while b.get("before") != 1:
                    await trio.sleep(0.01)
            assert na.catch_up_report is None  # not asked for
        a.close()
        # a is down: b moves on.
        for i in range(500):
            b.put(f"k{i}", i)
        b.delete("before")
        a = stores("a")
        async with crdt_kv.serve(a, peers=[addr(nb)], catch_up=True, **FAST) as na:
            # No waiting here: entering the context was the wait.
            assert a.get("before") is None
            assert [a.get(f"k{i}") for i in range(500)] == list(range(500))
            report = na.catch_up_report
            assert isinstance(report, CatchUpReport)
            assert report.complete
            assert [(p.address, p.peer_id) for p in report.caught_up] == [(addr(nb), "b")]


async def test_unreachable_and_silent_peers_do_not_hold_the_node_past_the_timeout(
    stores: Any,
) -> None:
    a = stores("a")
    refused = f"127.0.0.1:{free_tcp_port()}"
    async with trio.open_nursery() as nursery:
        silent = await silent_listener(nursery, hold_s=60)
        with trio.fail_after(20):  # the timeout below, with a wide margin for a slow machine
            async with crdt_kv.serve(
                a,
                peers=[refused, silent],
                catch_up=True,
                catch_up_timeout_s=0.5,
                handshake_timeout_s=60,
                **FAST,
            ) as na:
                report = na.catch_up_report
                assert report is not None
                assert [p.address for p in report.failed] == [refused]
                reason = report.failed[0].reason
                assert reason is not None and reason.startswith("connect failed:"), reason
                assert [p.address for p in report.pending] == [silent]
                assert report.caught_up == () and not report.complete
                assert report.elapsed_s >= 0.5
                assert f"failed     {refused}  connect failed" in str(report)
                # The node is up and accepts writes whatever the report says.
                a.put("x", 1)
        nursery.cancel_scope.cancel()


async def test_no_peers_enters_at_once(stores: Any) -> None:
    with trio.fail_after(10):
        async with crdt_kv.serve(stores("a"), catch_up=True, catch_up_timeout_s=3600) as na:
            assert na.catch_up_report is not None
            assert na.catch_up_report.peers == 0 and na.catch_up_report.complete


class OneShotDiscovery:
    """A discovery transport that hands the node one announcement after ``delay_s``."""

    def __init__(self, announcement: Announcement, delay_s: float) -> None:
        self.pending: list[bytes] = [announcement.encode()]
        self.delay_s = delay_s

    async def send(self, data: bytes) -> None:
        pass

    async def receive(self) -> tuple[bytes, str]:
        if not self.pending:
            await trio.sleep_forever()
        await trio.sleep(self.delay_s)
        return self.pending.pop(), "127.0.0.1"

    def close(self) -> None:
        pass


async def test_peer_discovered_during_catch_up_is_waited_for(stores: Any) -> None:
    """The configured peer hangs up only after a while; a peer discovered meanwhile is
    caught up from before the context is entered."""
    a, c = stores("a"), stores("c")
    for i in range(300):
        c.put(f"c{i}", i)
    async with trio.open_nursery() as nursery:
        slow = await silent_listener(nursery, hold_s=1.5)
        async with crdt_kv.serve(c, **FAST) as nc:
            found = Announcement("default", "c", "127.0.0.1", nc.address[1])
            async with crdt_kv.serve(
                a,
                peers=[slow],
                catch_up=True,
                discovery=True,
                discovery_transport=OneShotDiscovery(found, delay_s=0.2),
                **FAST,
            ) as na:
                report = na.catch_up_report
                assert report is not None
                assert [(p.address, p.peer_id) for p in report.caught_up] == [(addr(nc), "c")]
                assert [p.address for p in report.failed] == [slow]
                assert report.pending == ()
                assert [a.get(f"c{i}") for i in range(300)] == list(range(300))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bad", [-1, math.nan])
async def test_bad_timeout_fails_before_binding(stores: Any, bad: float) -> None:
    with pytest.raises(ConfigError, match="catch_up_timeout_s"):
        async with crdt_kv.serve(stores("a"), catch_up=True, catch_up_timeout_s=bad):
            pass
