"""Child process of ``test_net_crash.py``: pull a store over TCP, printing progress.

Usage: ``python net_crash_puller.py STORE_PATH HOST:PORT MAX_BATCH_ENTRIES``

Opens (or reopens after a crash) a RocksDB store with peer id ``puller`` and pulls
everything the node at ``HOST:PORT`` has, one line per event on stdout (flushed, so the
parent can SIGKILL it at a known point):

- ``connected cursor=N``: the handshake is done; N is our durable cursor into its log;
- ``applied to_seq=N received=M``: a batch was applied and its cursor committed;
- ``done received=M cursor=N digest=HEX``: the sync completed; the store was closed.
"""

from __future__ import annotations

import sys

import trio

import crdt_kv
from crdt_kv.protocol import BatchApplied, Connected, Event


def say(line: str) -> None:
    print(line, flush=True)


async def main(path: str, address: str, max_batch: int) -> None:
    host, _, port = address.rpartition(":")
    store = crdt_kv.open(path, backend="rocksdb", peer_id="puller")
    try:

        def progress(ev: Event) -> None:
            if isinstance(ev, Connected):
                say(f"connected cursor={ev.cursor}")
            elif isinstance(ev, BatchApplied):
                say(f"applied to_seq={ev.to_seq} received={ev.received}")

        stream = await trio.open_tcp_stream(host, int(port))
        result = await crdt_kv.replicate(
            store, stream, mode="pull", max_batch_entries=max_batch, on_event=progress
        )
        digest = store.digest().hex()
    finally:
        store.close()
    say(f"done received={result.stats.entries_received} cursor={result.cursor} digest={digest}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
