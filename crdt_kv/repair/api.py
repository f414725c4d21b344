"""``crdt_kv.reconcile``: run one range-fingerprint repair over a trio stream.

The shell around :class:`~crdt_kv.repair.machine.Reconciler`: storage requests run on a
worker thread (``trio.to_thread.run_sync``), so the event loop stays responsive while a
range is listed or a batch of states is applied; a background task keeps reading the
stream, so neither end can block the other by sending while it sends. Both ends call the
same function; the hellos decide who leads.
"""

from __future__ import annotations

import math

import trio

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.repair.machine import Reconciler
from crdt_kv.repair.messages import DEFAULT_MAX_FRAME_BYTES
from crdt_kv.repair.report import ReconcileReport
from crdt_kv.repair.source import RangeSource

__all__ = ["reconcile"]

_RECEIVE_BYTES = 65536


async def _reader(
    stream: trio.abc.ReceiveStream, out: trio.MemorySendChannel[bytes], broken: list[Exception]
) -> None:
    """Forward received bytes; b"" at the end of the stream or when reading fails."""
    async with out:
        while True:
            try:
                data = bytes(await stream.receive_some(_RECEIVE_BYTES))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                broken.append(exc)
                data = b""
            await out.send(data)
            if not data:
                return


async def _drive(
    machine: Reconciler,
    store: RangeSource,
    stream: trio.abc.SendStream,
    receive: trio.MemoryReceiveChannel[bytes],
    broken: list[Exception],
) -> None:
    while True:
        work = machine.storage_request()
        if work is not None:
            result = await trio.to_thread.run_sync(work.perform, store)
            machine.storage_done(result)
            continue
        out = machine.data_to_send()
        if out:
            await stream.send_all(out)
            continue
        if machine.finished:
            return
        data = await receive.receive()
        if not data:
            why = f": {broken[0]}" if broken else ""
            raise RemoteProtocolError(f"the peer closed the stream during reconciliation{why}")
        machine.receive_data(data)


async def reconcile(
    store: RangeSource,
    stream: trio.abc.Stream,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    item_threshold: int = 16,
) -> ReconcileReport:
    """Make ``store`` and the replica at the other end of ``stream`` hold the same states.

    Every key one side lacks or holds differently is shipped and merged by the usual rules
    (``lww`` order or ``siblings`` join), except that absence wins for states older than
    the collection horizon of the side that lacks them. Returns this end's counters. Raises
    :class:`~crdt_kv.errors.RemoteProtocolError` if the peer breaks the protocol, closes
    the stream early, or keeps another conflict mode or encoding; what was applied before
    the error stays applied (each applied batch is a valid merge). Does not close
    ``stream``.
    """
    machine = Reconciler(item_threshold=item_threshold, max_frame_bytes=max_frame_bytes)
    machine.start()
    send, receive = trio.open_memory_channel[bytes](math.inf)
    broken: list[Exception] = []
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reader, stream, send, broken)
        try:
            await _drive(machine, store, stream, receive, broken)
        except Exception as exc:  # raised below, not wrapped in the nursery's group
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    assert machine.report is not None
    return machine.report
