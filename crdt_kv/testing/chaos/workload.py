"""The writers of a chaos run: puts and deletes on a small key space, through the nodes'
client endpoints, every operation logged with its outcome.

Each writer is a thread with a blocking :class:`~crdt_kv.client.Client`. It sends each
operation to a node chosen at random (so the same keys are overwritten and deleted on
every node), with a value unique to the run (``w<writer>-<n>``), and appends one JSON line
per operation to its log (the format :mod:`.checker` reads): ``ok`` with the stamp of the
acknowledgement, ``unknown`` when the connection was lost before it (the write may or may
not have happened), ``refused`` (the node said no: nothing was written) or ``unsent``
(the node could not be reached; it is then left alone for :data:`AVOID_S`). Lines are
flushed at once, so a log survives the harness.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crdt_kv.client import Client
from crdt_kv.errors import ProtocolError, RequestRefusedError

__all__ = ["AVOID_S", "Writer"]

AVOID_S = 0.5
"""A node that could not be reached is left alone this long (it is likely down)."""


class Writer:
    """One writer thread's loop (:meth:`run`) until ``stop`` is set.

    ``nodes`` is ``[(peer id, client address)]``; ``keys`` the key space; a delete is
    chosen with probability ``delete_ratio``; ``pause_s`` separates operations (and
    doubles as the wait after a failed one). ``outcomes`` counts operations by status,
    ``refusals`` the refused ones by the node's error.
    """

    def __init__(
        self,
        index: int,
        nodes: Sequence[tuple[str, str]],
        keys: Sequence[str],
        log_path: Path,
        *,
        seed: int,
        stop: threading.Event,
        delete_ratio: float = 0.25,
        pause_s: float = 0.01,
        timeout_s: float = 5.0,
    ) -> None:
        self.index = index
        self.nodes = list(nodes)
        self.keys = list(keys)
        self.log_path = log_path
        self.rng = random.Random(seed)
        self.stop = stop
        self.delete_ratio = delete_ratio
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.outcomes: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self._clients: dict[str, Client] = {}
        self._avoid: dict[str, float] = {}
        self._n = 0

    def run(self) -> None:
        """Write until ``stop`` is set; closes its connections on the way out."""
        with self.log_path.open("a", encoding="utf-8") as log:
            try:
                while not self.stop.is_set():
                    record = self.one()
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    self.outcomes[record["status"]] += 1
                    pause = self.pause_s if record["status"] == "ok" else 5 * self.pause_s
                    self.stop.wait(pause)
            finally:
                for client in self._clients.values():
                    client.close()

    def one(self) -> dict[str, Any]:
        """Send one operation to a random node; its log record."""
        now = time.monotonic()
        up = [n for n in self.nodes if self._avoid.get(n[0], 0.0) <= now]
        node, address = self.rng.choice(up or self.nodes)
        self._n += 1
        record: dict[str, Any] = {"writer": self.index, "n": self._n, "node": node}
        record["key"] = self.rng.choice(self.keys)
        if self.rng.random() < self.delete_ratio:
            record["op"] = "del"
        else:
            record["op"], record["value"] = "put", f"w{self.index}-{self._n}"
        record["t0"] = time.time()
        client = self._clients.get(node)
        try:
            if client is None:
                client = self._clients[node] = Client(address, timeout_s=self.timeout_s)
        except OSError as exc:
            self._avoid[node] = time.monotonic() + AVOID_S
            record.update(status="unsent", error=str(exc))
            return record
        try:
            if record["op"] == "del":
                v = client.delete(record["key"])
            else:
                v = client.put(record["key"], record["value"])
        except RequestRefusedError as exc:
            self.refusals[exc.kind] += 1
            record.update(status="refused", error=str(exc))
        except (OSError, ProtocolError) as exc:
            del self._clients[node]
            client.close()
            record.update(status="unknown", error=f"{type(exc).__name__}: {exc}")
        else:
            record.update(status="ok", hlc=v.hlc, peer=v.peer)
        record["t1"] = time.time()
        return record
