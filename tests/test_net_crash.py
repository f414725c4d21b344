"""A puller process SIGKILLed mid-sync resumes from its durable cursor (issue 4).

The puller is a real child process (``tests/net_crash_puller.py``) with a RocksDB store in
``tmp_path``; the server is a real node on loopback TCP in this process. The test kills
the child with SIGKILL after some batches were acknowledged, restarts it, lets it finish,
and counts from the server's own statistics how many entries it had to send twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from net_helpers import wait_until

import crdt_kv
from crdt_kv import Store

PULLER = Path(__file__).with_name("net_crash_puller.py")
N_ENTRIES = 40_000
MAX_BATCH = 100
WINDOW = 4
KILL_AFTER = N_ENTRIES // 4


class Child:
    """A puller process whose stdout we read line by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buf = b""
        self.lines: list[str] = []

    async def next_line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self.buf:
            chunk = await self.proc.stdout.receive_some(1 << 16)
            if not chunk:
                raise AssertionError(f"puller exited early; said {self.lines[-3:]}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        text = line.decode()
        self.lines.append(text)
        return text


def field(line: str, name: str) -> int:
    for part in line.split():
        if part.startswith(name + "="):
            return int(part.split("=", 1)[1])
    raise AssertionError(f"no {name} in {line!r}")


async def start_puller(path: Path, address: str) -> Child:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(PULLER), str(path), address, str(MAX_BATCH)],
        stdout=subprocess.PIPE,
        env=env,
    )
    return Child(proc)


@pytest.fixture
def source(tmp_path: Path) -> Store:
    s = crdt_kv.open(tmp_path / "source", backend="rocksdb", peer_id="source")
    with s.batch() as b:
        for i in range(N_ENTRIES):
            b.put(f"key:{i:06d}", {"i": i, "pad": "x" * (i % 13)})
    yield s
    s.close()


async def test_puller_killed_mid_sync_resumes_from_cursor(tmp_path: Path, source: Store) -> None:
    child_path = tmp_path / "puller"
    with trio.fail_after(25):
        async with crdt_kv.serve(
            source,
            live=False,
            sync_interval_s=60,
            session_options={"max_batch_entries": MAX_BATCH, "window": WINDOW},
        ) as node:
            address = f"{node.address[0]}:{node.address[1]}"

            # --- first life: killed after a quarter of the log was applied -----------
            child = await start_puller(child_path, address)
            assert (await child.next_line()) == "connected cursor=0"
            last_applied = 0
            while last_applied < KILL_AFTER:
                line = await child.next_line()
                assert line.startswith("applied"), line
                last_applied = field(line, "to_seq")
            child.proc.send_signal(signal.SIGKILL)
            assert await child.proc.wait() == -signal.SIGKILL
            assert not any(x.startswith("done") for x in child.lines)
            await wait_until(lambda: node.stats()["puller"]["errors"] == 1)
            first = node.stats()["puller"]
            sent_first_life = first["entries_sent"]
            assert not first["connected"]  # the server saw the session die
            assert last_applied <= sent_first_life < N_ENTRIES, "killed too late"

            # --- second life: resume ---------------------------------------------------
            child = await start_puller(child_path, address)
            cursor = field(await child.next_line(), "cursor")
            # Durable: every batch the child reported applied survived SIGKILL.
            assert cursor >= last_applied
            while not (line := await child.next_line()).startswith("done"):
                assert line.startswith("applied"), line
            assert await child.proc.wait() == 0
            received_second_life = field(line, "received")
            total_sent = node.stats()["puller"]["entries_sent"]

    resent = total_sent - N_ENTRIES
    print(
        f"killed after {last_applied} applied, {sent_first_life} sent; "
        f"restart cursor {cursor}; resent {resent} of {N_ENTRIES}"
    )
    assert received_second_life == N_ENTRIES - cursor
    # Only the window in flight (sent, not yet applied) is sent twice, never the whole log.
    assert 0 <= resent <= WINDOW * MAX_BATCH
    assert resent == sent_first_life - cursor
    assert line.split("digest=")[1] == source.digest().hex()
    with crdt_kv.open(child_path, backend="rocksdb") as copy:
        assert copy.digest() == source.digest()
        assert len(copy) == N_ENTRIES
        assert copy.cursor("source", source.incarnation) == source.last_seq
