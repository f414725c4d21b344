"""A replication node over TCP: ``async with serve(store, ...) as node``.

A node runs, inside one trio nursery:

- a TCP listener; every inbound connection runs one protocol session (a ``once``
  :class:`~crdt_kv.protocol.PeerLink`);
- for every known peer address, one ``dial`` :class:`~crdt_kv.protocol.PeerLink`: it
  holds a live session that pushes each commit as it happens (``live=True``), or syncs in
  anti-entropy rounds (level-replicator's model), sooner when writes are frequent; a
  failed connection is retried with exponential backoff and jitter (randomness from an
  injectable :class:`random.Random`). Every such decision is the link's: the node only
  dials, accepts, moves bytes (:class:`~crdt_kv.net.driver.LinkDriver`) and keeps score;
- one storage worker that applies received batches and scans the log off the event loop;
- optionally UDP multicast discovery (:mod:`crdt_kv.net.discovery`), which adds peers as
  they announce themselves.

Leaving the ``async with`` cancels every task and closes every socket. A failing peer or
connection (refused, reset, malformed or oversized frames, clock skew) fails only its own
session: it is counted in :meth:`Node.stats`, reported as an ``error`` event, and the node
keeps serving everyone else. The store is not closed by the node: it belongs to the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import trio

from crdt_kv.errors import ClosedError, ConfigError, PeerIdentityError
from crdt_kv.net.addresses import format_address, parse_address
from crdt_kv.net.admission import (
    MAX_INBOUND_CONNECTIONS,
    MAX_PENDING_CONNECTIONS,
    Admission,
)
from crdt_kv.net.budget import DEFAULT_MAX_BUFFERED_BYTES, ByteBudget
from crdt_kv.net.catchup import CatchUpWaiter
from crdt_kv.net.driver import LinkDriver, StorageWorker, on_commit_anywhere
from crdt_kv.net.events import (
    EVENT_KINDS,
    ErrorEvent,
    EventStream,
)
from crdt_kv.net.peers import UNIDENTIFIED, PeerBook
from crdt_kv.net.penalty import Penalties
from crdt_kv.net.scoring import Scorekeeper, Target, Watch
from crdt_kv.net.sockets import peer_address, peer_host, tune_socket
from crdt_kv.net.tls import TlsConfig, verified_identity
from crdt_kv.protocol import (
    CatchUpReport,
    CollectGarbage,
    GcPolicy,
    GcResult,
    LinkConfig,
    LinkRole,
    PeerLink,
)
from crdt_kv.store import Store

__all__ = [
    "DEFAULT_SYNC_INTERVAL_S",
    "DISCOVERED_MAX_FAILURES",
    "MAX_DISCOVERED_PEERS",
    "MAX_INBOUND_CONNECTIONS",
    "MAX_PENDING_CONNECTIONS",
    "UNIDENTIFIED",
    "Node",
    "format_address",
    "parse_address",
]

log = logging.getLogger("crdt_kv.net")

_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept(2) errors that mean the host is out of a resource for now: retry soon."""

DEFAULT_SYNC_INTERVAL_S = 5.0
MAX_DISCOVERED_PEERS = 64
"""Discovered addresses dialed at most at once: announcements are unauthenticated, so a
flood of forged ones must not make the node dial thousands of addresses."""
DISCOVERED_MAX_FAILURES = 5
"""A discovered address is forgotten after this many failures in a row (a real peer keeps
announcing itself and is added again)."""

StreamWrapper = Callable[[trio.abc.Stream, bool], trio.abc.Stream]


class Node(Scorekeeper):
    """A running replication node; get one from :func:`serve`.

    ``address`` is the ``(host, port)`` actually bound. Methods are safe to call from any
    task of the same trio run while it runs. :attr:`admission` admits inbound connections
    (refusals also count in ``connections_refused``). What its links report is scored by
    its base class, :class:`~crdt_kv.net.scoring.Scorekeeper`."""

    def __init__(
        self,
        store: Store,
        *,
        config: LinkConfig,
        connect_timeout_s: float,
        rng: random.Random,
        wrap_stream: StreamWrapper | None,
        gc: GcPolicy | None = None,
        tls: TlsConfig | None = None,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        penalties: Penalties | None = None,
    ) -> None:
        self.store = store
        self.penalties = penalties if penalties is not None else Penalties()
        """Source hosts blocked for misbehaving (:mod:`crdt_kv.net.penalty`)."""
        self.budget = ByteBudget(max_buffered_bytes)
        """Bytes all connections may hold of what peers sent (:mod:`crdt_kv.net.budget`)."""
        self.tls = tls
        self.gc = gc
        """The collection policy (None: this node never collects)."""
        self._gc_wake: trio.Event | None = None
        self.config = config
        self.cluster_id = config.cluster_id
        self.mode = config.mode
        self.live = config.live
        self.connect_timeout_s = connect_timeout_s
        self.rng = rng
        self.wrap_stream = wrap_stream
        self.address: tuple[str, int] = ("", 0)
        self.metrics_address: tuple[str, int] | None = None
        """Where ``/metrics`` is served (``serve(metrics_listen=...)``), else None."""
        self.client_address: tuple[str, int] | None = None
        """Where the client endpoint is served (``serve(client_listen=...)``), else None."""
        self.discovery: Any = None
        self.connections_accepted = 0
        self.connections_refused = 0
        self.admission = Admission()
        self.max_discovered_peers = MAX_DISCOVERED_PEERS
        self.discovered_max_failures = DISCOVERED_MAX_FAILURES
        self.callback_errors = 0
        self.worker = StorageWorker(store)
        self._drivers: set[LinkDriver] = set()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._targets: dict[str, Target] = {}
        self._book = PeerBook(
            store, clock=trio.current_time, keep=lambda: [t.peer_id for t in self._targets.values()]
        )
        self._callbacks: dict[str, list[Callable[[Any], object]]] = {k: [] for k in EVENT_KINDS}
        self._streams: set[EventStream] = set()
        self._catch_up: CatchUpWaiter | None = None
        self.catch_up_report: CatchUpReport | None = None
        """What catching up before accepting writes achieved (None: not asked for)."""

    # --- public API -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the node stopped (the ``async with`` was left)."""
        return self._closed

    @property
    def peer_id(self) -> str:
        """The store's peer id."""
        return self.store.peer_id

    @property
    def peer_book(self) -> PeerBook:
        """The per-peer records behind :meth:`stats`: ``len(peer_book.records)`` held,
        ``peer_book.pruned`` dropped since start (see :class:`~crdt_kv.net.peers.PeerBook`)."""
        return self._book

    @property
    def peers(self) -> list[str]:
        """Addresses this node dials (configured, added and discovered)."""
        return list(self._targets)

    def add_peer(self, address: str, *, discovered: bool = False) -> bool:
        """Start replicating with the node at ``"host:port"``; returns False if known already.

        Our own listening address is ignored (a self-connection would only fail). A
        ``discovered`` address is refused while :attr:`max_discovered_peers` discovered
        ones are known, and forgotten after :attr:`discovered_max_failures` failed
        attempts in a row.
        """
        self._check()
        host, port = parse_address(address, what="peer address")
        key = format_address(host, port)
        if key in self._targets or (host, port) == self.address:
            return False
        if discovered:
            known = sum(1 for t in self._targets.values() if t.discovered)
            if known >= self.max_discovered_peers:
                log.warning("%s: ignoring discovered peer %s: too many", self.peer_id, key)
                return False
        watch = Watch(self._link(LinkRole.DIAL, self.config, key), key, outbound=True)
        driver = LinkDriver(watch.link, worker=self.worker, on_event=lambda e: self._see(watch, e))
        target = watch.target = Target(key, host, port, discovered, driver)
        driver.connect = lambda: self._dial(target)
        self._targets[key] = target
        assert self._nursery is not None
        self._nursery.start_soon(self._run_target, target)
        if self._catch_up is not None:
            self._catch_up.add(key)
        log.info("%s: peer %s added%s", self.peer_id, key, " (discovered)" if discovered else "")
        return True

    def remove_peer(self, address: str) -> bool:
        """Stop dialing ``address`` (its open sessions are cancelled); False if unknown."""
        host, port = parse_address(address, what="peer address")
        target = self._targets.pop(format_address(host, port), None)
        if target is None:
            return False
        target.scope.cancel()
        if self._catch_up is not None:
            self._catch_up.remove(target.address)
        return True

    async def sync_now(self) -> dict[str, BaseException | None]:
        """One anti-entropy round with every known peer, concurrently; returns when all ended.

        Each round is a fresh short-lived, non-live session (even if a live session is up),
        so on return everything each peer had when its round started is here, and ours is
        there (as ``mode`` allows). Failures do not raise: they are recorded in
        :meth:`stats` and returned as ``{address: error or None}``.
        """
        self._check()
        results: dict[str, BaseException | None] = {}
        once = dataclasses.replace(self.config, live=False)

        async def one(target: Target) -> None:
            link = self._link(LinkRole.ONCE, once, target.address)
            watch = Watch(link, target.address, outbound=True, target=target)
            driver = LinkDriver(
                link,
                worker=self.worker,
                connect=lambda: self._dial(target),
                on_event=lambda ev: self._see(watch, ev),
            )
            await self._run_driver(driver)
            results[target.address] = watch.result

        async with trio.open_nursery() as nursery:
            for target in list(self._targets.values()):
                nursery.start_soon(one, target)
        return results

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-peer replication state, keyed by peer id.

        Peers we dial but never reached are keyed by their address; connections that
        failed before identifying themselves are summed under :data:`UNIDENTIFIED`.
        Fields: ``peer_id``, ``address``, ``incarnation`` (hex), ``cursor`` (the last
        sequence of the peer's log applied here, durable), ``remote_last_seq`` (the peer's
        log head as last seen), ``lag_entries`` (log positions of the peer we know of but
        have not applied), ``lag_seconds`` (0 while a live session is tailing with nothing
        pending, else seconds since we last caught up; None if never), ``bytes_sent``,
        ``bytes_received``, ``entries_sent``, ``entries_received``, ``entries_changed``
        (received entries that won and changed our state), ``batches_sent``,
        ``batches_received``, ``sessions`` (handshakes done), ``rounds_completed``,
        ``errors`` (failed connections and sessions), ``protocol_errors`` (sessions failed
        by a protocol violation, either side's), ``skew_rejected`` (entries and hellos
        refused for clock skew), ``connected`` (a session is open now), ``live`` (a live
        session is open now), ``last_sync`` (wall time of the last catch-up, or None),
        ``last_contact`` (wall time we last heard from the peer; now while a session is
        open; None if never), ``reachable`` (a session is open, or the last attempt to
        reach the peer worked), ``last_error``, ``discovered``, ``dialed`` (this node
        dials it). Records of peers unheard of for the store's member expiry are pruned
        (:attr:`peer_book` counts them).
        """
        targets = [t.info() for t in self._targets.values()]
        return self._book.stats(targets, trio.current_time())

    def on(self, kind: str, callback: Callable[[Any], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``kind``; returns an unsubscriber.

        Kinds: ``connect``, ``connection``, ``disconnect``, ``error``, ``change``.
        Callbacks run synchronously inside the node: keep them short. An exception from a
        callback is logged and counted (``callback_errors``), never propagated.
        """
        if kind not in self._callbacks:
            raise ConfigError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
        lst = self._callbacks[kind]
        lst.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                lst.remove(callback)

        return unsubscribe

    def events(self, *kinds: str, buffer: int = 1024) -> EventStream:
        """An async iterator over the node's events (all kinds, or only ``kinds``)."""
        for k in kinds:
            if k not in EVENT_KINDS:
                raise ConfigError(f"unknown event kind {k!r}; known: {', '.join(EVENT_KINDS)}")
        self._check()
        return EventStream(self._streams, kinds, buffer)

    def __repr__(self) -> str:
        host, port = self.address
        state = "closed" if self._closed else f"{len(self._targets)} peers"
        return f"<Node {self.peer_id!r} on {format_address(host, port)} {state}>"

    # --- internals: links -------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"node of peer {self.peer_id!r} is stopped")

    def _link(self, role: LinkRole, config: LinkConfig, label: str) -> PeerLink:
        return PeerLink(
            self.store,
            role=role,
            config=config,
            rng=self.rng,
            now=trio.current_time(),
            defer_storage=True,
            label=label,
        )

    async def _run_target(self, target: Target) -> None:
        with target.scope:
            await self._run_driver(target.driver)

    async def _run_driver(self, driver: LinkDriver, stream: trio.abc.Stream | None = None) -> None:
        """Run a link, telling it about our commits while it runs."""
        self._drivers.add(driver)
        driver.budget = self.budget
        if self.tls is not None:
            driver.identify = verified_identity
        try:
            await driver.run(stream)
        finally:
            self._drivers.discard(driver)

    def _on_commit(self) -> None:
        for driver in list(self._drivers):
            driver.local_changed()

    # --- internals: sockets -----------------------------------------------------------

    async def _wrap(
        self, stream: trio.abc.Stream, *, outbound: bool, address: str, host: str | None = None
    ) -> trio.abc.Stream:
        """``stream`` in TLS (handshake done) or as ``wrap_stream`` makes it; closed if that
        fails (a refused TLS peer raises :class:`PeerIdentityError`)."""
        try:
            if self.tls is not None:
                timeout = self.connect_timeout_s if outbound else self.config.handshake_timeout_s
                return await self.tls.secure(
                    stream, outbound=outbound, address=address, host=host, timeout_s=timeout
                )
            return stream if self.wrap_stream is None else self.wrap_stream(stream, outbound)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def _dial(self, target: Target) -> trio.abc.Stream:
        with trio.fail_after(self.connect_timeout_s):
            stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
        tune_socket(stream)
        return await self._wrap(stream, outbound=True, address=target.address, host=target.host)

    async def _serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept inbound connections, as ``trio.serve_listeners`` does (and, like it,
        retry after an ``EMFILE``-like error), but close a penalised host's connection at
        once, unread and without starting a task for it: the cheapest answer to a flood
        (bench_hostile: about 300 such connections a second)."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error("%s: accept failed (%s); retrying in 0.1 s", self.peer_id, exc)
                    await trio.sleep(0.1)
                    continue
                if not self.penalties.check(peer_host(stream), trio.current_time()):
                    stream.socket.close()
                    continue
                nursery.start_soon(self._serve_inbound, stream)

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        try:
            await self._handle_inbound(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        host, address = peer_host(stream), peer_address(stream)
        ticket = self.admission.admit()
        if isinstance(ticket, str):
            self.connections_refused += 1
            log.warning("%s: refusing connection from %s: %s", self.peer_id, address, ticket)
            await trio.aclose_forcefully(stream)
            return
        self.connections_accepted += 1
        try:
            tune_socket(stream)
            try:
                wrapped = await self._wrap(stream, outbound=False, address=address)
            except PeerIdentityError as exc:  # no session ever started: book it here
                self._book.refused(exc)
                if exc.fault:
                    self._offended(host, "identity")
                log.warning("%s: refused %s: %s", self.peer_id, address, exc)
                return self._emit(ErrorEvent(None, address, False, exc))
            link = self._link(LinkRole.ONCE, self.config, address)
            watch = Watch(link, address, outbound=False, ticket=ticket, source=host)
            driver = LinkDriver(link, worker=self.worker, on_event=lambda e: self._see(watch, e))
            with trio.CancelScope() as scope:
                ticket.cancel = scope.cancel  # evicted while still unidentified
                await self._run_driver(driver, wrapped)
        finally:
            self.admission.release(ticket)

    async def _bind(self, listen: str) -> list[trio.SocketListener]:
        host, port = parse_address(listen, what="listen address")
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        sockname = listeners[0].socket.getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        return listeners

    async def _start(
        self,
        nursery: trio.Nursery,
        listeners: list[trio.SocketListener],
        peers: Iterable[str],
        discovery: Callable[[Node], Any] | None,
    ) -> None:
        self._nursery = nursery
        nursery.start_soon(self.worker.run)
        await nursery.start(self._serve_listeners, listeners)
        unsubscribe = on_commit_anywhere(self.store, self._on_commit)
        nursery.start_soon(self._unsubscribe_on_exit, unsubscribe)
        if self.gc is not None:
            nursery.start_soon(self._run_gc, self.gc)
        for p in peers:
            self.add_peer(p)
        if discovery is not None:
            self.discovery = discovery(self)
            await nursery.start(self.discovery.run)
        log.info("%s: listening on %s", self.peer_id, format_address(*self.address))

    async def _run_gc(self, policy: GcPolicy) -> None:
        """Honour the collection policy: sleep until its timer, run its requests on the
        storage worker's thread for catch-up work (in order with the other requests there;
        the store's commit lock serializes it with every commit)."""
        while True:
            wake = self._gc_wake = trio.Event()
            timer = policy.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer):
                await wake.wait()
            request = policy.handle_timer(trio.current_time())
            if request is not None:
                self.worker.submit(request, functools.partial(self._collected, policy, request))

    def _collected(
        self, policy: GcPolicy, request: CollectGarbage, result: object, error: BaseException | None
    ) -> None:
        if error is not None:
            log.error("%s: collection failed", self.peer_id, exc_info=error)
        policy.storage_done(request, result if isinstance(result, GcResult) else None)
        if self._gc_wake is not None:
            self._gc_wake.set()

    async def _unsubscribe_on_exit(self, unsubscribe: Callable[[], None]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            unsubscribe()

    def _stop(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()
