"""Prometheus metrics of a node (crdt_kv/net/metrics.py): the collector on a fake node,
real nodes on loopback scraped over HTTP, and the endpoint against bad clients."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
from net_helpers import wait_until
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

import crdt_kv
from crdt_kv import ConfigError, Node
from crdt_kv.net.budget import ByteBudget
from crdt_kv.net.metrics import (
    PEER_COUNTERS,
    PEER_GAUGES,
    MetricsEndpoint,
    NodeCollector,
    metrics_registry,
    open_metrics_endpoint,
)
from crdt_kv.net.peers import PeerBook
from crdt_kv.net.penalty import Penalties
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock

WALL = 1_800_000_000.0


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Metric], sample: str, **labels: str) -> float | None:
    """The value of ``sample`` with exactly ``labels``, or None if absent."""
    for f in fams.values():
        for s in f.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return None


def peer_row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "lag_entries": 0,
        "lag_seconds": None,
        "last_contact": None,
        "last_sync": None,
        "connected": False,
        "live": False,
        "reachable": False,
        "dialed": False,
        **{field: 0 for field, _, _ in PEER_COUNTERS},
    }
    row.update(over)
    return row


class FakeNode:
    """What :class:`NodeCollector` reads of a node, with stats chosen by the test."""

    def __init__(self, store: Store, stats: dict[str, dict[str, Any]]) -> None:
        self.store = store
        self.peer_id = store.peer_id
        self.cluster_id = "prod"
        self.connections_accepted = 7
        self.connections_refused = 2
        self.peer_book = PeerBook(store)
        self.peer_book.record("b")
        self.peer_book.pruned = 3
        self.budget = ByteBudget(1 << 20)
        self.budget.register(lambda: 12345)
        self.budget.waits = 6
        self.penalties = Penalties(grace=0)
        self.penalties.offend("10.0.0.9", "protocol", 0.0)
        self.penalties.check("10.0.0.9", 0.0)
        self._stats = stats

    def stats(self) -> dict[str, dict[str, Any]]:
        return self._stats


def scrape_fake(node: FakeNode) -> dict[str, Metric]:
    registry = CollectorRegistry()
    registry.register(NodeCollector(node, wall=lambda: WALL))  # type: ignore[arg-type]
    return families(generate_latest(registry).decode())


def test_collector_turns_stats_and_store_counters_into_named_families() -> None:
    clock = ManualClock(int(WALL * 1000))
    store = crdt_kv.open(backend="memory", peer_id="a", clock=clock)
    for i in range(5):
        store.put(f"k{i}", i)
    store.delete("k0")
    stats = {
        "b": peer_row(
            lag_entries=4,
            lag_seconds=2.5,
            last_contact=WALL - 1,
            connected=True,
            live=True,
            reachable=True,
            dialed=True,
            sessions=3,
            bytes_sent=100,
            bytes_received=200,
            errors=1,
            protocol_errors=1,
            skew_rejected=6,
            divergences=2,
            repairs=1,
        ),
        "10.0.0.9:7000": peer_row(errors=5, dialed=True),
    }
    fams = scrape_fake(FakeNode(store, stats))
    for name, fam in fams.items():
        assert name.startswith("crdt_kv_"), name
        assert fam.documentation, f"{name} has no help text"
    for _, name, _ in PEER_COUNTERS:
        assert fams[name.removesuffix("_total")].type == "counter"
    for _, name, _ in PEER_GAUGES:
        assert fams[name].type == "gauge"
    assert value(fams, "crdt_kv_node_info", peer_id="a", cluster_id="prod", version="0.1.0")
    assert value(fams, "crdt_kv_peer_lag_entries", peer="b") == 4
    assert value(fams, "crdt_kv_node_buffered_bytes") == 12345
    assert value(fams, "crdt_kv_node_budget_waits_total") == 6
    assert value(fams, "crdt_kv_node_peer_refusals_total", reason="penalised") == 1
    assert value(fams, "crdt_kv_node_source_offences_total", reason="protocol") == 1
    assert value(fams, "crdt_kv_node_penalised_sources") == 1
    assert value(fams, "crdt_kv_peer_lag_seconds", peer="b") == 2.5
    assert value(fams, "crdt_kv_peer_last_contact_timestamp_seconds", peer="b") == WALL - 1
    assert value(fams, "crdt_kv_peer_connected", peer="b") == 1
    assert value(fams, "crdt_kv_peer_up", peer="b") == 1
    assert value(fams, "crdt_kv_peer_sessions_total", peer="b") == 3
    assert value(fams, "crdt_kv_peer_sent_bytes_total", peer="b") == 100
    assert value(fams, "crdt_kv_peer_received_bytes_total", peer="b") == 200
    assert value(fams, "crdt_kv_peer_protocol_errors_total", peer="b") == 1
    assert value(fams, "crdt_kv_peer_skew_refusals_total", peer="b") == 6
    assert value(fams, "crdt_kv_peer_divergences_total", peer="b") == 2
    assert value(fams, "crdt_kv_peer_repairs_total", peer="b") == 1
    # A peer never reached is labelled by its address; unknown values are absent, not 0.
    assert value(fams, "crdt_kv_peer_up", peer="10.0.0.9:7000") == 0
    assert value(fams, "crdt_kv_peer_errors_total", peer="10.0.0.9:7000") == 5
    assert value(fams, "crdt_kv_peer_lag_seconds", peer="10.0.0.9:7000") is None
    assert value(fams, "crdt_kv_peer_last_contact_timestamp_seconds", peer="10.0.0.9:7000") is None
    assert value(fams, "crdt_kv_store_live_keys") == 4
    assert value(fams, "crdt_kv_store_tombstones") == 1
    assert value(fams, "crdt_kv_store_quarantined_keys") == 0
    assert value(fams, "crdt_kv_store_commits_total") == 6
    assert value(fams, "crdt_kv_store_log_sequence") == 6
    assert value(fams, "crdt_kv_store_collection_horizon_age_seconds") is None
    assert value(fams, "crdt_kv_peer_records") == 1
    assert value(fams, "crdt_kv_peer_records_pruned_total") == 3
    assert value(fams, "crdt_kv_node_connections_accepted_total") == 7
    assert value(fams, "crdt_kv_node_connections_refused_total") == 2
    store.close()


def test_per_peer_series_are_capped_dialed_then_connected_then_latest_first() -> None:
    store = crdt_kv.open(backend="memory", peer_id="a")
    stats = {f"made-up-{i:03}": peer_row(last_contact=WALL - 100 + i) for i in range(50)}
    stats["dialed"] = peer_row(dialed=True)
    stats["open"] = peer_row(connected=True, last_contact=WALL - 500)
    registry = CollectorRegistry()
    node: Any = FakeNode(store, stats)
    registry.register(NodeCollector(node, wall=lambda: WALL, max_peers=5))
    fams = families(generate_latest(registry).decode())
    shown = {s.labels["peer"] for s in fams["crdt_kv_peer_up"].samples}
    assert shown == {"dialed", "open", "made-up-049", "made-up-048", "made-up-047"}
    assert value(fams, "crdt_kv_peer_series_omitted") == len(stats) - 5
    assert value(scrape_fake(FakeNode(store, stats)), "crdt_kv_peer_series_omitted") == 0
    store.close()


def test_horizon_age_and_clock_lead_are_measured_against_the_wall_clock() -> None:
    clock = ManualClock(int(WALL * 1000))
    store = crdt_kv.open(backend="memory", peer_id="a", clock=clock)
    store.raise_gc_horizon(int((WALL - 90) * 1000) << 16)
    assert value(
        scrape_fake(FakeNode(store, {})), "crdt_kv_store_collection_horizon_age_seconds"
    ) == pytest.approx(90)
    clock.advance(30_000)
    store.put("k", 1)  # the HLC now reads 30 s past WALL
    assert value(
        scrape_fake(FakeNode(store, {})), "crdt_kv_store_hlc_ahead_seconds"
    ) == pytest.approx(30)
    store.close()
    fams = scrape_fake(FakeNode(store, {}))  # a closed store: node metrics only
    assert value(fams, "crdt_kv_store_live_keys") is None
    assert value(fams, "crdt_kv_peer_records") == 1


# --- real nodes over loopback -----------------------------------------------------------


async def http(address: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` raw, return everything the server answers until it closes."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
    return data


async def scrape(node: Node) -> dict[str, Metric]:
    assert node.metrics_address is not None
    answer = await http(node.metrics_address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert b"Content-Type: text/plain" in head
    return families(body.decode())


FAST: dict[str, Any] = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "rng": random.Random(3)}


async def test_two_syncing_nodes_report_bytes_lag_and_store_over_http() -> None:
    a = crdt_kv.open(backend="memory", peer_id="a")
    b = crdt_kv.open(backend="memory", peer_id="b")
    for i in range(20):
        a.put(f"k{i}", i)
    async with crdt_kv.serve(b, metrics_listen="127.0.0.1:0", **FAST) as nb:
        host, port = nb.address
        async with crdt_kv.serve(
            a, peers=[f"{host}:{port}"], metrics_listen="127.0.0.1:0", **FAST
        ) as na:
            assert na.metrics_address is not None and na.metrics_address[1] > 0
            await wait_until(lambda: len(b) == 20, what="b caught up")
            await wait_until(lambda: na.stats()["b"]["live"], what="a live with b")
            await wait_until(lambda: nb.stats()["a"]["lag_seconds"] == 0, what="b tailing a")
            fa, fb = await scrape(na), await scrape(nb)
    for fams, me, other in ((fa, "a", "b"), (fb, "b", "a")):
        assert value(fams, "crdt_kv_node_info", peer_id=me, cluster_id="default", version="0.1.0")
        assert value(fams, "crdt_kv_peer_connected", peer=other) == 1
        assert value(fams, "crdt_kv_peer_up", peer=other) == 1
        assert value(fams, "crdt_kv_peer_lag_entries", peer=other) == 0
        assert value(fams, "crdt_kv_peer_sessions_total", peer=other) >= 1  # type: ignore[operator]
        assert value(fams, "crdt_kv_peer_sent_bytes_total", peer=other) > 0  # type: ignore[operator]
        assert value(fams, "crdt_kv_peer_received_bytes_total", peer=other) > 0  # type: ignore[operator]
        assert value(fams, "crdt_kv_peer_records") == 1
        assert value(fams, "crdt_kv_store_live_keys") == 20
    assert value(fa, "crdt_kv_peer_dialed", peer="b") == 1
    assert value(fb, "crdt_kv_peer_dialed", peer="a") == 0
    assert value(fb, "crdt_kv_peer_lag_seconds", peer="a") == 0
    assert value(fb, "crdt_kv_peer_received_entries_total", peer="a") == 20
    assert value(fa, "crdt_kv_store_commits_total") == 20
    assert value(fb, "crdt_kv_node_connections_accepted_total") >= 1  # type: ignore[operator]
    a.close()
    b.close()


async def test_metrics_max_peers_is_checked() -> None:
    store = crdt_kv.open(backend="memory", peer_id="a")
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="metrics_max_peers"):
            async with crdt_kv.serve(store, metrics_max_peers=bad):  # type: ignore[arg-type]
                pass
    store.close()


async def test_metrics_listen_is_checked_and_a_taken_port_fails_serve() -> None:
    store = crdt_kv.open(backend="memory", peer_id="a")
    with pytest.raises(ConfigError, match="metrics listen address"):
        async with crdt_kv.serve(store, metrics_listen="nowhere"):
            pass
    async with crdt_kv.serve(store, metrics_listen="127.0.0.1:0") as first:
        assert first.metrics_address is not None
        taken = f"127.0.0.1:{first.metrics_address[1]}"
        with pytest.raises(OSError):
            async with crdt_kv.serve(store, metrics_listen=taken):
                pass
    async with crdt_kv.serve(store) as plain:
        assert plain.metrics_address is None
    store.close()


# --- the endpoint against bad clients ----------------------------------------------------


class Boom:
    def __init__(self) -> None:
        self.fail = False

    def collect(self) -> list[Metric]:
        if self.fail:
            raise RuntimeError("collector bug")
        return []


async def test_endpoint_answers_bad_requests_with_errors_and_keeps_serving() -> None:
    boom = Boom()
    registry = CollectorRegistry()
    registry.register(boom)
    ep = await open_metrics_endpoint(registry, "127.0.0.1:0")
    ep.timeout_s = 0.3
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        at = ep.address
        assert (await http(at, b"\x00\x01garbage\xff\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await http(at, b"GET /metrics\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await http(at, big)).startswith(b"HTTP/1.1 431 ")
        endless = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 3000  # never a blank line
        assert (await http(at, endless)).startswith(b"HTTP/1.1 431 ")
        post = await http(at, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post
        assert (await http(at, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        head = await http(at, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        # A silent client and a half-sent request are cut off at the deadline.
        assert await http(at, b"") == b""
        assert await http(at, b"GET /metr") == b""
        boom.fail = True
        assert (await http(at, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500 ")
        boom.fail = False
        ok = await http(at, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ")
        assert ep.served == 2 and ep.rejected == 9
        nursery.cancel_scope.cancel()


async def test_endpoint_closes_connections_beyond_its_cap_at_once() -> None:
    ep = MetricsEndpoint(CollectorRegistry(), await trio.open_tcp_listeners(0, host="127.0.0.1"))
    ep.max_connections = 2
    ep.timeout_s = 30
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        held = [await trio.open_tcp_stream(*ep.address) for _ in range(2)]
        await wait_until(lambda: ep._open == 2, what="two connections held")
        with trio.fail_after(10):
            assert await http(ep.address, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
        assert ep.rejected == 1
        for s in held:
            await s.aclose()
        await wait_until(lambda: ep._open == 0, what="held connections released")
        ok = await http(ep.address, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ")
        nursery.cancel_scope.cancel()


def test_registry_is_per_node_not_the_global_default() -> None:
    from prometheus_client import REGISTRY

    store = crdt_kv.open(backend="memory", peer_id="a")
    r1 = metrics_registry(FakeNode(store, {}))  # type: ignore[arg-type]
    r2 = metrics_registry(FakeNode(store, {}))  # type: ignore[arg-type]
    assert r1 is not r2 and REGISTRY not in (r1, r2)
    assert b"crdt_kv_" not in generate_latest(REGISTRY)
    store.close()


def test_every_metric_is_documented_in_operations_md() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = doc.split("\n## 9. Metrics\n", 1)[1]
    clock = ManualClock(int(WALL * 1000))
    store = crdt_kv.open(backend="memory", peer_id="a", clock=clock)
    store.raise_gc_horizon(1 << 16)
    fams = scrape_fake(FakeNode(store, {"b": peer_row(lag_seconds=1.0, last_sync=WALL)}))
    names = {s.name for f in fams.values() for s in f.samples}
    assert len(names) >= 30
    missing = sorted(n for n in names if f"`{n}`" not in section)
    assert not missing, f"undocumented metrics: {missing}"
    store.close()
