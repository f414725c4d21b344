"""The ``crdt-kv serve`` processes of a chaos run: configure, start, kill, restart, stop,
and read back.

Each node is a real process (``python -m crdt_kv.cli serve --config node.toml``) with a
RocksDB store of its own, its replication and client ports fixed for the whole run (a
restarted node comes back where its peers and writers expect it), and its peers set to
the proxy's addresses, so it reaches the others only through the proxy. Ports are picked
below the kernel's ephemeral range, so no outgoing connection can take a stopped node's
port before it restarts. Output goes to ``node.log`` in the node's directory (appended
across restarts). :meth:`Cluster.kill_all` is the safety net: it SIGKILLs whatever runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

import crdt_kv
from crdt_kv.client import Client

__all__ = ["Cluster", "NodeProcess", "dump_store", "free_ports"]

STOP_TIMEOUT_S = 20.0


def _ephemeral_floor() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int, rng_start: int) -> list[int]:
    """``n`` loopback ports free now, below the ephemeral range, searched from a start
    derived from ``rng_start`` (so concurrent runs rarely probe the same ports)."""
    floor = _ephemeral_floor()
    low = 10_000 if floor > 12_000 else 1024
    span = max(floor - low, 1)
    out: list[int] = []
    port = low + rng_start % span
    for _ in range(span):
        port = low + (port - low + 1) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise OSError(f"found only {len(out)} free loopback ports below {floor}")


@dataclass(eq=False)
class NodeProcess:
    """One node: its files, ports, and the process while it runs."""

    name: str
    root: Path
    listen_port: int
    client_port: int
    peers: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    proc: trio.Process | None = None
    starts: int = 0
    kills: int = 0
    crashes: list[str] = field(default_factory=list)
    """Exits nobody asked for (code and the end of the log)."""
    _log: TextIO | None = None
    _expect_exit: bool = False

    @property
    def store_path(self) -> Path:
        return self.root / "store"

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        node = {
            "peer_id": self.name,
            "cluster_id": "chaos",
            "listen": f"127.0.0.1:{self.listen_port}",
            "client_listen": self.client_address,
            "peers": self.peers,
            **self.options,
        }
        lines = ["[storage]", 'backend = "rocksdb"', f"path = {json.dumps(str(self.store_path))}"]
        lines += ["", "[node]"] + [f"{k} = {_toml(v)}" for k, v in node.items()]
        path = self.root / "node.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    async def start(self) -> None:
        """Start the process (it serves writes once its catch-up is done: :meth:`ready`)."""
        assert not self.running, f"{self.name} is running"
        if self._log is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._log = (self.root / "node.log").open("a", encoding="utf-8")
        self._log.write(f"--- start {self.starts + 1}\n")
        self._log.flush()
        package_root = str(Path(crdt_kv.__file__).resolve().parent.parent)
        path = os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "crdt_kv.cli", "serve", "--config", str(self.write_config())],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, "PYTHONPATH": path},
        )
        self._expect_exit = False
        self.starts += 1

    def exited_by_itself(self) -> bool:
        """True (once per exit, recorded in :attr:`crashes`) if the process ended without
        being asked to: a crash, or a start that failed."""
        proc = self.proc
        if proc is None or proc.returncode is None or self._expect_exit:
            return False
        self._expect_exit = True
        self.crashes.append(f"{self.name} exited with {proc.returncode}: {self.log_tail()}")
        return True

    async def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.running:
            assert self.proc is not None
            self._expect_exit = True
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            self.kills += 1

    async def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after :data:`STOP_TIMEOUT_S`); the exit code."""
        if self.proc is None:
            return None
        if self.running:
            self._expect_exit = True
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT_S):
                await self.proc.wait()
            if self.running:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode

    async def ready(self, timeout_s: float) -> bool:
        """Poll the client endpoint until it answers (True), the process ends or
        ``timeout_s`` passes (False)."""
        with trio.move_on_after(timeout_s):
            while self.running:
                if await trio.to_thread.run_sync(self.answers):
                    return True
                await trio.sleep(0.1)
        return False

    def answers(self) -> bool:
        return self.info() is not None

    def info(self) -> dict[str, Any] | None:
        """The node's ``info`` over its client endpoint, or None if it does not answer."""
        try:
            with Client(self.client_address, timeout_s=2.0) as c:
                return c.info()
        except (OSError, crdt_kv.CrdtKvError):
            return None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = (self.root / "node.log").read_text(encoding="utf-8", errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return "(no log)"

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | list):
        return json.dumps(v)
    return repr(v)


class Cluster:
    """The nodes of a run, by name."""

    def __init__(self, nodes: Sequence[NodeProcess]) -> None:
        self.nodes = {n.name: n for n in nodes}

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(self.nodes.values())

    def running(self) -> list[NodeProcess]:
        return [n for n in self if n.running]

    @property
    def crashes(self) -> list[str]:
        return [c for n in self for c in n.crashes]

    async def kill_all(self) -> None:
        """SIGKILL every process still running (the cleanup of last resort)."""
        for n in self:
            if n.running:
                assert n.proc is not None
                n._expect_exit = True
                n.proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            for n in self:
                if n.proc is not None:
                    await n.proc.wait()
                n.close_log()


def dump_store(path: Path) -> dict[str, Any]:
    """Every register of the store at ``path`` (tombstones too), opened read-only:
    ``{key: {"value", "hlc", "peer", "deleted"}}``, the checker's input."""
    out: dict[str, Any] = {}
    with crdt_kv.open(path, backend="rocksdb", read_only=True) as store:
        for e in store.changes():
            out[str(e.key)] = {
                "value": None if e.deleted else e.value,
                "hlc": e.hlc,
                "peer": e.peer,
                "deleted": e.deleted,
            }
    return out
