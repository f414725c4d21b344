"""``serve()``: run a :class:`~crdt_kv.net.node.Node` for a store inside ``async with``.

Builds the node's :class:`~crdt_kv.protocol.LinkConfig` from the keyword options, binds the
listener, starts discovery if asked, and stops everything when the body exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import trio

from crdt_kv.errors import ConfigError
from crdt_kv.horizon import DEFAULT_GC_GRACE_MS
from crdt_kv.net.addresses import parse_address
from crdt_kv.net.budget import DEFAULT_MAX_BUFFERED_BYTES, FLOOR_BYTES
from crdt_kv.net.catchup import CatchUpWaiter
from crdt_kv.net.client_api import check_client_listen, open_client_endpoint
from crdt_kv.net.metrics import MAX_PEER_SERIES, metrics_registry, open_metrics_endpoint
from crdt_kv.net.node import DEFAULT_SYNC_INTERVAL_S, Node, StreamWrapper
from crdt_kv.net.penalty import DEFAULT_PENALTY_MAX_S, Penalties
from crdt_kv.net.tls import TlsConfig
from crdt_kv.protocol import (
    DEFAULT_CATCH_UP_TIMEOUT_S,
    DEFAULT_GC_INTERVAL_S,
    GcPolicy,
    LinkConfig,
)
from crdt_kv.store import Store

__all__ = ["serve"]


@contextlib.asynccontextmanager
async def serve(
    store: Store,
    *,
    listen: str = "127.0.0.1:0",
    peers: Iterable[str] = (),
    cluster_id: str = "default",
    sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S,
    min_sync_interval_s: float | None = None,
    live: bool = True,
    mode: str = "both",
    discovery: bool = False,
    multicast_group: str | None = None,
    multicast_port: int | None = None,
    multicast_interface: str | None = None,
    multicast_ttl: int = 1,
    announce_interval_s: float = 2.0,
    discovery_transport: Any = None,
    rng: random.Random | None = None,
    idle_timeout_s: float | None = 30.0,
    live_idle_timeout_s: float | None = 60.0,
    handshake_timeout_s: float | None = 10.0,
    connect_timeout_s: float = 5.0,
    backoff_base_s: float = 0.2,
    backoff_max_s: float = 30.0,
    wrap_stream: StreamWrapper | None = None,
    tls: TlsConfig | None = None,
    session_options: Mapping[str, Any] | None = None,
    gc_grace_s: float | None = DEFAULT_GC_GRACE_MS / 1000,
    gc_interval_s: float = DEFAULT_GC_INTERVAL_S,
    catch_up: bool = False,
    catch_up_timeout_s: float = DEFAULT_CATCH_UP_TIMEOUT_S,
    metrics_listen: str | None = None,
    metrics_max_peers: int = MAX_PEER_SERIES,
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    source_penalty_max_s: float = DEFAULT_PENALTY_MAX_S,
    client_listen: str | None = None,
    client_allow_remote: bool = False,
) -> AsyncIterator[Node]:
    """Run a replication node for ``store`` while the ``async with`` body runs.

    ``listen``: ``"host:port"`` to bind (port 0 picks one; ``node.address`` tells which).
    ``peers``: addresses to dial; more with :meth:`Node.add_peer`. ``mode`` and ``live``
    apply to every session (inbound ones too: a node with ``live=False`` never tails).
    ``sync_interval_s``: the slowest period of anti-entropy rounds per peer;
    ``min_sync_interval_s`` (default a tenth of it) the fastest, reached when writes are
    frequent. ``idle_timeout_s`` fails a session whose peer is silent that long, and
    ``live_idle_timeout_s`` a live one (live sessions exchange keep-alives a third of the
    shorter apart, so only a vanished peer is dropped, and a connection that sent a live
    Hello and then nothing frees its slot);
    ``handshake_timeout_s`` drops connections that never send a Hello. Reconnects back off
    exponentially from ``backoff_base_s`` to ``backoff_max_s`` with jitter drawn from
    ``rng``. ``wrap_stream(stream, outbound)`` may wrap each TCP stream (e.g. in
    :class:`trio.SSLStream`). ``tls`` (:class:`~crdt_kv.net.tls.TlsConfig`, instead of
    ``wrap_stream``) runs every connection over mutual TLS and binds peer ids to
    certificates: a Hello must claim the peer id its certificate names, peers outside
    ``tls.allowed_peers`` and plaintext are refused (counted in
    ``node.peer_book.refusals``). ``session_options`` go to every
    :class:`~crdt_kv.protocol.Session` (``max_batch_entries``, ``window``, ...) and may set
    any other :class:`~crdt_kv.protocol.LinkConfig` field (``push_delay_s``, ...).

    ``discovery=True`` announces this node by UDP multicast on ``multicast_group`` /
    ``multicast_port`` every ``announce_interval_s`` and adds the peers it hears (same
    ``cluster_id``); the multicast interface defaults to the listen host when that is a
    specific IPv4 address, so a node bound to 127.0.0.1 announces on loopback only.
    ``discovery_transport`` replaces the multicast socket (any object with the
    :class:`~crdt_kv.net.discovery.DatagramTransport` methods).

    Every ``gc_interval_s`` the node raises the store's collection horizon to what its
    members acknowledged minus ``gc_grace_s`` and collects the tombstones below it
    (:class:`~crdt_kv.protocol.GcPolicy`); ``gc_grace_s=None`` turns collection off.

    ``catch_up=True`` follows level-replicator's rule that a database must try to replicate
    before it accepts writes (a restarted node then rarely stamps writes over changes it
    missed): entering the ``async with`` returns only once a session with every peer
    (configured, and any added or discovered meanwhile) caught up or failed once, or after
    ``catch_up_timeout_s`` (default 30 s), whichever comes first; peers that failed keep
    being retried in the background. The node listens meanwhile, so peers catching up
    from it are served. ``node.catch_up_report``
    (:class:`~crdt_kv.protocol.CatchUpReport`) says which peers were caught up from, which
    failed and why, and which were still pending; with no peers it returns at once.
    ``metrics_listen="HOST:PORT"`` serves Prometheus metrics at ``/metrics`` there (port 0
    picks one; ``node.metrics_address`` tells which): :mod:`crdt_kv.net.metrics`, with
    per-peer series for at most ``metrics_max_peers`` peers (default 128: dialed, then
    connected, then most recently heard from; ``crdt_kv_peer_series_omitted`` counts the
    rest). ``client_listen="HOST:PORT"`` serves the client endpoint there, once any catch-up is
    done (``node.client_address`` tells where; :mod:`crdt_kv.net.client_api`): a loopback
    address, unless ``client_allow_remote``.

    ``max_buffered_bytes`` (default 64 MiB) bounds what all connections together hold of
    what peers sent, buffered or decoded (:mod:`crdt_kv.net.budget`): while it is spent,
    connections holding 64 KiB or more stop reading and small frames still flow.
    ``source_penalty_max_s`` (default 60 s; 0 turns it off) is the longest a source host
    whose inbound sessions keep breaking the protocol is blocked (its connections closed
    unread: :mod:`crdt_kv.net.penalty`).
    """
    the_rng = rng if rng is not None else random.Random()
    config = LinkConfig(
        mode=mode,
        live=live,
        cluster_id=cluster_id,
        sync_interval_s=sync_interval_s,
        min_sync_interval_s=min_sync_interval_s,
        idle_timeout_s=idle_timeout_s,
        live_idle_timeout_s=live_idle_timeout_s,
        handshake_timeout_s=handshake_timeout_s,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
    ).with_options(session_options or {})
    if tls is not None:
        if wrap_stream is not None:
            raise ConfigError("give serve() tls or wrap_stream, not both")
        if tls.allowed_peers is not None:
            config = dataclasses.replace(config, allowed_peers=frozenset(tls.allowed_peers))
    gc = None
    if gc_grace_s is not None:
        gc = GcPolicy(now=trio.current_time(), grace_s=gc_grace_s, interval_s=gc_interval_s)
    node = Node(
        store,
        gc=gc,
        config=config,
        connect_timeout_s=connect_timeout_s,
        rng=the_rng,
        wrap_stream=wrap_stream,
        tls=tls,
        max_buffered_bytes=_budget_limit(max_buffered_bytes),
        penalties=Penalties(max_s=_penalty_max(source_penalty_max_s)),
    )
    make_discovery: Callable[[Node], Any] | None = None
    if discovery:
        from crdt_kv.net.discovery import Discovery

        def make_discovery(n: Node) -> Any:
            return Discovery.for_node(
                n,
                group=multicast_group,
                port=multicast_port,
                interface=multicast_interface,
                ttl=multicast_ttl,
                interval_s=announce_interval_s,
                transport=discovery_transport,
            )

    peers = list(peers)
    for p in peers:
        parse_address(p, what="peer address")
    # Created before binding: a bad timeout fails before any socket is opened.
    # With discovery, listen for two announcements before deciding nobody is there.
    listen_s = 2 * announce_interval_s if discovery else 0.0
    waiter = CatchUpWaiter(timeout_s=catch_up_timeout_s, listen_s=listen_s) if catch_up else None
    if isinstance(metrics_max_peers, bool) or not isinstance(metrics_max_peers, int):
        raise ConfigError(f"metrics_max_peers must be an int, got {metrics_max_peers!r}")
    if metrics_max_peers < 0:
        raise ConfigError(f"metrics_max_peers must not be negative, got {metrics_max_peers}")
    if metrics_listen is not None:
        parse_address(metrics_listen, what="metrics listen address")
    if client_listen is not None:
        check_client_listen(client_listen, allow_remote=client_allow_remote)
    listeners = await node._bind(listen)
    metrics = clients = None
    try:
        if metrics_listen is not None:
            metrics = await open_metrics_endpoint(
                metrics_registry(node, max_peers=metrics_max_peers), metrics_listen
            )
            node.metrics_address = metrics.address
        if client_listen is not None:
            clients = await open_client_endpoint(
                store, client_listen, allow_remote=client_allow_remote
            )
            node.client_address = clients.address
    except BaseException:
        with trio.CancelScope(shield=True):  # a cancelled close must not skip the others
            for listener in [*listeners, *(metrics.listeners if metrics else [])]:
                await trio.aclose_forcefully(listener)
        raise
    # Exceptions of the body (and of starting up) are re-raised outside the nursery, so
    # callers see their own exception rather than an ExceptionGroup wrapping it.
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            node._catch_up = waiter
            await node._start(nursery, listeners, peers, make_discovery)
            if metrics is not None:
                await nursery.start(metrics.run)
            if waiter is not None:
                node.catch_up_report = await waiter.wait()
                node._catch_up = None
            if clients is not None:  # writes are taken once caught up
                await nursery.start(clients.run)
            yield node
        except BaseException as exc:
            body_error = exc
        finally:
            node._stop()
            nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):  # closed already if it ran; not if starting failed
        for endpoint in (metrics, clients):
            for listener in endpoint.listeners if endpoint is not None else []:
                await trio.aclose_forcefully(listener)
    if body_error is not None:
        raise body_error


def _budget_limit(value: object) -> int:
    if type(value) is not int or value < FLOOR_BYTES:
        raise ConfigError(
            f"max_buffered_bytes must be an int of at least {FLOOR_BYTES}, got {value!r}"
        )
    return value


def _penalty_max(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf:
        return float(value)
    raise ConfigError(
        f"source_penalty_max_s must be a non-negative number of seconds, got {value!r}"
    )
