"""Prometheus metrics of a node, computed at scrape time, and the ``/metrics`` endpoint.

:class:`NodeCollector` turns :meth:`Node.stats <crdt_kv.net.node.Node.stats>`, the
store's :meth:`~crdt_kv.store.Store.statistics` and its counters into metric families on
every scrape, so nothing is kept twice and nothing runs between scrapes. Each node gets
its own :class:`~prometheus_client.CollectorRegistry` (:func:`metrics_registry`), never
the process-wide default one: several nodes may live in one process.

:class:`MetricsEndpoint` serves ``GET /metrics`` over HTTP/1.1 from trio itself. The
metric families are collected on the event loop (collecting reads the node's state, which
only the trio loop may touch) and rendered to text on a worker thread: with hundreds of
peers that text is thousands of lines, 50-190 ms of the event loop per scrape under
bench_hostile's attack, a stall every scrape interval. It is
bounded against bad clients: one request per connection, at most
:data:`MAX_REQUEST_BYTES` of request head, :data:`REQUEST_TIMEOUT_S` for the whole
exchange, :data:`MAX_METRICS_CONNECTIONS` at once; anything else is answered with an
error status or closed, and never fails the node.

Every metric name is listed in ``docs/operations.md`` ("Metrics").
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from crdt_kv.net.addresses import parse_address

if TYPE_CHECKING:
    from crdt_kv.net.node import Node

__all__ = [
    "MAX_METRICS_CONNECTIONS",
    "MAX_PEER_SERIES",
    "MAX_REQUEST_BYTES",
    "PEER_COUNTERS",
    "PEER_GAUGES",
    "REQUEST_TIMEOUT_S",
    "MetricsEndpoint",
    "NodeCollector",
    "metrics_registry",
    "open_metrics_endpoint",
]

log = logging.getLogger("crdt_kv.net")

MAX_REQUEST_BYTES = 8192
"""Longest request head (request line and headers) read; longer gets 431."""
REQUEST_TIMEOUT_S = 5.0
"""Deadline for one whole exchange (read the request, write the answer)."""
MAX_METRICS_CONNECTIONS = 16
"""Connections served at once; more are closed at once."""
MAX_PEER_SERIES = 128
"""Peers given per-peer series by default (``serve(metrics_max_peers=...)``): dialed
peers first, then connected ones, then the most recently heard from. Every peer id a
Hello ever claimed has a record until ``member_expiry``; without TLS anyone can claim new
ones, and a series per made-up id would flood the monitoring system and make each scrape
cost the event loop tens of milliseconds."""

PEER_GAUGES: tuple[tuple[str, str, str], ...] = (
    (
        "lag_entries",
        "crdt_kv_peer_lag_entries",
        "Entries of the peer's change log known here but not applied yet.",
    ),
    (
        "lag_seconds",
        "crdt_kv_peer_lag_seconds",
        "Seconds since this node was last caught up with the peer (0 while tailing a live "
        "session); absent if it never was.",
    ),
    (
        "last_contact",
        "crdt_kv_peer_last_contact_timestamp_seconds",
        "Unix time the peer was last heard from (now while a session is open).",
    ),
    (
        "last_sync",
        "crdt_kv_peer_last_sync_timestamp_seconds",
        "Unix time this node last caught up with the peer.",
    ),
    ("connected", "crdt_kv_peer_connected", "1 while a session with the peer is open."),
    ("live", "crdt_kv_peer_live", "1 while a live (tailing) session with the peer is open."),
    (
        "reachable",
        "crdt_kv_peer_up",
        "1 if a session is open or the last attempt to reach the peer worked.",
    ),
    ("dialed", "crdt_kv_peer_dialed", "1 if this node dials the peer (configured or found)."),
)
"""``(stats field, metric name, help)`` of every per-peer gauge."""

PEER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("sessions", "crdt_kv_peer_sessions_total", "Sessions (accepted handshakes) with the peer."),
    ("rounds_completed", "crdt_kv_peer_rounds_total", "Anti-entropy rounds completed."),
    ("bytes_sent", "crdt_kv_peer_sent_bytes_total", "Bytes sent to the peer."),
    ("bytes_received", "crdt_kv_peer_received_bytes_total", "Bytes received from the peer."),
    ("entries_sent", "crdt_kv_peer_sent_entries_total", "Log entries sent to the peer."),
    (
        "entries_received",
        "crdt_kv_peer_received_entries_total",
        "Log entries received from the peer.",
    ),
    ("errors", "crdt_kv_peer_errors_total", "Failed connections and sessions."),
    (
        "protocol_errors",
        "crdt_kv_peer_protocol_errors_total",
        "Sessions failed by a protocol violation (either side's).",
    ),
    (
        "skew_rejected",
        "crdt_kv_peer_skew_refusals_total",
        "Entries and handshakes refused for clock skew.",
    ),
    (
        "divergences",
        "crdt_kv_peer_divergences_total",
        "Rounds after which the two digests differed.",
    ),
    ("repairs", "crdt_kv_peer_repairs_total", "Range repairs run with the peer."),
)
"""``(stats field, metric name, help)`` of every per-peer counter."""


def _version() -> str:
    try:
        return importlib.metadata.version("crdt_kv")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a tree
        return "unknown"


class NodeCollector:
    """A :class:`prometheus_client.registry.Collector` reading one node at scrape time.

    ``wall`` is the Unix time in seconds (injectable for tests). ``collect`` must run in
    the node's trio thread, as :meth:`Node.stats` must.
    """

    def __init__(
        self,
        node: Node,
        *,
        wall: Callable[[], float] = time.time,
        max_peers: int = MAX_PEER_SERIES,
    ) -> None:
        self.node = node
        self.wall = wall
        self.max_peers = max_peers
        self.version = _version()

    def collect(self) -> Iterator[Metric]:
        """Every metric family, freshly computed."""
        yield from self._node_metrics()
        stats = self.node.stats()
        chosen = _chosen(stats, self.max_peers)
        yield GaugeMetricFamily(
            "crdt_kv_peer_series_omitted",
            "Peers with a record but no per-peer series (over metrics_max_peers).",
            value=len(stats) - len(chosen),
        )
        yield from self._peer_metrics(chosen)
        if not self.node.store.closed:
            yield from self._store_metrics()

    def _node_metrics(self) -> Iterator[Metric]:
        node = self.node
        info = InfoMetricFamily("crdt_kv_node", "This node: its peer id, cluster and version.")
        info.add_metric(
            [], {"peer_id": node.peer_id, "cluster_id": node.cluster_id, "version": self.version}
        )
        yield info
        book = node.peer_book
        yield GaugeMetricFamily(
            "crdt_kv_peer_records",
            "Per-peer records held (pruned after the member expiry).",
            value=len(book.records),
        )
        yield CounterMetricFamily(
            "crdt_kv_peer_records_pruned_total",
            "Per-peer records pruned: peers unheard of for the member expiry, or over the cap.",
            value=book.pruned,
        )
        yield CounterMetricFamily(
            "crdt_kv_node_connections_accepted_total",
            "Inbound replication connections accepted.",
            value=node.connections_accepted,
        )
        yield CounterMetricFamily(
            "crdt_kv_node_connections_refused_total",
            "Inbound replication connections closed at once: too many open, or a second live "
            "session of a peer id.",
            value=node.connections_refused,
        )
        yield GaugeMetricFamily(
            "crdt_kv_node_buffered_bytes",
            "Bytes received from peers and not yet done with (buffered or decoded).",
            value=node.budget.held,
        )
        yield CounterMetricFamily(
            "crdt_kv_node_budget_waits_total",
            "Times a connection stopped reading because max_buffered_bytes was spent.",
            value=node.budget.waits,
        )
        refused = CounterMetricFamily(
            "crdt_kv_node_peer_refusals_total",
            "Peers refused for who they are (TLS on), by reason: tls_handshake, no_identity, "
            "identity_mismatch, not_allowed; and penalised: connections closed unread because "
            "their source host was blocked for misbehaving.",
            labels=["reason"],
        )
        for reason, count in sorted(book.refusals.items()):
            refused.add_metric([reason], count)
        refused.add_metric(["penalised"], node.penalties.blocked)
        yield refused
        offences = CounterMetricFamily(
            "crdt_kv_node_source_offences_total",
            "Inbound sessions that counted against their source host, by reason: protocol, "
            "rejected, identity.",
            labels=["reason"],
        )
        for reason, count in sorted(node.penalties.offences.items()):
            offences.add_metric([reason], count)
        yield offences
        yield GaugeMetricFamily(
            "crdt_kv_node_penalised_sources",
            "Source hosts with offences on record (blocked now or recently).",
            value=len(node.penalties),
        )

    def _peer_metrics(self, stats: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        for field, name, doc in PEER_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["peer"])
            for peer, row in stats.items():
                value = row.get(field)
                if value is not None:
                    gauge.add_metric([peer], float(value))
            yield gauge
        for field, name, doc in PEER_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["peer"])
            for peer, row in stats.items():
                counter.add_metric([peer], float(row.get(field) or 0))
            yield counter

    def _store_metrics(self) -> Iterator[Metric]:
        store = self.node.store
        st = store.statistics()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        now = self.wall()
        yield gauge("crdt_kv_store_live_keys", "Keys holding a live value.", st.live)
        yield gauge("crdt_kv_store_tombstones", "Deleted keys not collected yet.", st.tombstones)
        yield gauge(
            "crdt_kv_store_quarantined_keys",
            "Keys lost to storage rot, waiting for every member's answer in a repair.",
            st.quarantined,
        )
        yield gauge(
            "crdt_kv_store_log_sequence", "Newest local change-log sequence.", store.last_seq
        )
        yield counter("crdt_kv_store_commits_total", "Commits since open.", store.stats["commits"])
        yield counter(
            "crdt_kv_store_collected_tombstones_total",
            "Tombstones removed by collection since open.",
            st.collected,
        )
        yield gauge(
            "crdt_kv_store_hlc_ahead_seconds",
            "How far the store's hybrid logical clock runs ahead of this host's wall clock "
            "(0 normally; more when a peer's clock dragged it ahead).",
            max(0.0, (store.hlc.last >> 16) / 1000 - now),
        )
        horizon = GaugeMetricFamily(
            "crdt_kv_store_collection_horizon_age_seconds",
            "Age of the tombstone-collection horizon (absent while there is none).",
        )
        if st.gc_horizon:
            horizon.add_metric([], now - (st.gc_horizon >> 16) / 1000)
        yield horizon


def _chosen(stats: dict[str, dict[str, Any]], most: int) -> dict[str, dict[str, Any]]:
    """At most ``most`` rows of ``stats``: dialed peers, then connected ones, then the most
    recently heard from (ties by name)."""
    if len(stats) <= most:
        return stats

    def rank(item: tuple[str, dict[str, Any]]) -> tuple[bool, bool, float, str]:
        peer, row = item
        heard = row.get("last_contact") or 0
        return (not row.get("dialed"), not row.get("connected"), -heard, peer)

    return dict(sorted(stats.items(), key=rank)[:most])


def metrics_registry(
    node: Node, *, wall: Callable[[], float] = time.time, max_peers: int = MAX_PEER_SERIES
) -> CollectorRegistry:
    """A registry of its own holding one :class:`NodeCollector` for ``node``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, wall=wall, max_peers=max_peers))
    return registry


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def _response(status: int, body: bytes, content_type: str, *, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head_bytes if head else head_bytes + body


class _Collected:
    """Metric families already collected, as a registry for :func:`generate_latest`."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _render(families: list[Metric]) -> bytes:
    """The text exposition of ``families`` (pure: runs on a worker thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(families))
    return generate_latest(registry)


def _error(status: int, text: str) -> bytes:
    return _response(status, text.encode("ascii") + b"\n", "text/plain; charset=utf-8")


class MetricsEndpoint:
    """``GET /metrics`` (and ``HEAD``) over HTTP/1.1 on trio listeners; 404 elsewhere.

    Get one bound from :func:`open_metrics_endpoint`, run it with ``nursery.start(run)``.
    ``served`` and ``rejected`` count answered scrapes and refused or failed requests.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        listeners: list[trio.SocketListener],
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_connections: int = MAX_METRICS_CONNECTIONS,
    ) -> None:
        self.registry = registry
        self.listeners = listeners
        self.timeout_s = timeout_s
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.served = 0
        self.rejected = 0
        self._open = 0
        sockname = listeners[0].socket.getsockname()
        self.address: tuple[str, int] = (str(sockname[0]), int(sockname[1]))

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled."""
        await trio.serve_listeners(self._handle, self.listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self._open >= self.max_connections:
            self.rejected += 1
            await trio.aclose_forcefully(stream)
            return
        self._open += 1
        answered = False
        try:
            with trio.move_on_after(self.timeout_s):
                await stream.send_all(await self._answer(stream))
                answered = True
                await stream.send_eof()
                await self._drain(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:
            # Whatever goes wrong with one request must not take the node down.
            log.exception("metrics request failed")
        finally:
            self._open -= 1
            if not answered:
                self.rejected += 1
            await trio.aclose_forcefully(stream)

    async def _drain(self, stream: trio.abc.ReceiveStream) -> None:
        """Read what the client still sends until it closes (bounded), so closing does not
        reset the connection and destroy the answer before the client read it."""
        left = 8 * self.max_request_bytes
        while left > 0 and (chunk := await stream.receive_some(left)):
            left -= len(chunk)

    async def _answer(self, stream: trio.abc.ReceiveStream) -> bytes:
        head = await self._read_head(stream)
        if head is None:
            self.rejected += 1
            return _error(431, "request too large")
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.rejected += 1
            return _error(400, "bad request")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            self.rejected += 1
            return _error(405, "only GET and HEAD")
        if target.split(b"?", 1)[0] != b"/metrics":
            self.rejected += 1
            return _error(404, "not found: try /metrics")
        try:
            families = list(self.registry.collect())
            body = await trio.to_thread.run_sync(_render, families)
        except Exception:
            log.exception("collecting metrics failed")
            self.rejected += 1
            return _error(500, "collecting metrics failed")
        self.served += 1
        return _response(200, body, CONTENT_TYPE_LATEST, head=method == b"HEAD")

    async def _read_head(self, stream: trio.abc.ReceiveStream) -> bytes | None:
        """The request head without its blank line (all that came, at EOF); None if it is
        longer than :attr:`max_request_bytes`."""
        buf = bytearray()
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > self.max_request_bytes:
                return None
            chunk = await stream.receive_some(self.max_request_bytes + 1 - len(buf))
            if not chunk:
                return bytes(buf)
            buf += chunk
        return None if end > self.max_request_bytes else bytes(buf[:end])


async def open_metrics_endpoint(registry: CollectorRegistry, listen: str) -> MetricsEndpoint:
    """Bind ``listen`` (``"host:port"``, port 0 picks one) for a :class:`MetricsEndpoint`.

    Binding happens here, before the node starts, so a taken port fails ``serve()`` with
    the :class:`OSError` at once rather than inside the running node.
    """
    host, port = parse_address(listen, what="metrics listen address")
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    return MetricsEndpoint(registry, listeners)
