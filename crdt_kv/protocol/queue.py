"""The storage-request queue of a session: how its storage work is handed out and its
results come back (:mod:`crdt_kv.protocol.storage`), a base class of
:class:`~crdt_kv.protocol.session.Session` (through :class:`SessionPart`, the base of its
sending and receiving sides) so that module stays small.

With ``defer_storage=False`` a request is performed at once, inline; otherwise it waits in
the queue until the driver takes it (:meth:`StorageQueue.storage_request`), performs it
wherever it likes and hands the result back. At most one is handed out at a time.
"""

from __future__ import annotations

from collections import deque

from crdt_kv.errors import CrdtKvError, LocalProtocolError
from crdt_kv.protocol.events import Event
from crdt_kv.protocol.messages import AbortCode, Message
from crdt_kv.protocol.replica import Replica
from crdt_kv.protocol.storage import StorageRequest

__all__ = ["SessionPart", "StorageQueue"]


class StorageQueue:
    """Storage requests queued, handed out and finished; the session supplies what a
    result or a failure means (:meth:`_finish`, :meth:`_on_storage_error`)."""

    replica: Replica
    defer_storage: bool
    _queued: deque[StorageRequest]
    _taken: StorageRequest | None

    @property
    def storage_busy(self) -> bool:
        """A storage request is queued or being performed."""
        return bool(self._queued) or self._taken is not None

    def storage_request(self) -> StorageRequest | None:
        """Take the next storage request to perform (``defer_storage=True`` only).

        At most one is handed out at a time: call :meth:`storage_done` (or
        :meth:`storage_failed`) before the next one is given.
        """
        if self._taken is not None or not self._queued:
            return None
        self._taken = self._queued.popleft()
        return self._taken

    def storage_done(self, request: StorageRequest, result: object) -> list[Event]:
        """Hand back what :meth:`StorageRequest.perform` returned; returns new events."""
        self._release(request)
        self._finish(request, result)
        self._process()
        return self._take_events()

    def storage_failed(self, request: StorageRequest, error: BaseException) -> list[Event]:
        """The request raised ``error``. Clock skew and undecodable entries fail the session
        as the peer's fault; anything else is ours and is re-raised after the session is
        closed with an ``Abort``."""
        self._release(request)
        self._on_storage_error(request, error)
        return self._take_events()

    def _release(self, request: StorageRequest) -> None:
        if request is not self._taken:
            raise LocalProtocolError(f"storage result for a request not handed out: {request!r}")
        self._taken = None

    def _submit(self, request: StorageRequest) -> None:
        if not self.defer_storage:
            try:
                result = request.perform(self.replica)
            except Exception as exc:
                self._on_storage_error(request, exc)
                return
            self._finish(request, result)
            return
        self._queued.append(request)

    # --- supplied by the session ----------------------------------------------------------

    def _finish(self, request: StorageRequest, result: object) -> None:
        raise NotImplementedError

    def _on_storage_error(self, request: StorageRequest, error: BaseException) -> None:
        raise NotImplementedError

    def _process(self) -> None:
        raise NotImplementedError

    def _take_events(self) -> list[Event]:
        raise NotImplementedError


class SessionPart(StorageQueue):
    """The base of each side of a session (:class:`~crdt_kv.protocol.sending.Sender`,
    :class:`~crdt_kv.protocol.receiving.Receiver`): the plumbing both get from the
    session, which owns the state."""

    def _send(self, msg: Message, frame: bytes = b"") -> None:
        raise NotImplementedError

    def _fail(self, error: CrdtKvError, code: AbortCode) -> None:
        raise NotImplementedError

    def _check_complete(self) -> None:
        raise NotImplementedError
