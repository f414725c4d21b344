"""One chaos run, start to verdict.

1. Start the proxy, then every node (each dials the others through it) and wait until
   each answers on its client endpoint.
2. For ``seconds``: the writers write, the nemesis kills, restarts and injects faults.
3. Stop the writers, lift every fault, restart every node that is down, wait until each
   answers again.
4. Poll every node's digest until all are equal twice in a row (bounded by
   ``converge_timeout_s``); the time that took is the convergence time.
5. Stop every node with SIGTERM (a clean close), dump every store read-only to JSON, and
   hand the dumps and the writers' logs to the independent :mod:`.checker`.

Files in the work directory: per node ``nN/`` (``node.toml``, ``node.log``, ``store/``),
``writer-N.jsonl``, ``nemesis.log`` (every kill and fault, with its wall time, to line up
with the writers' ``t0``), ``dump-nN.json``.

Whatever happens, no process outlives the run (:meth:`Cluster.kill_all`).
"""

from __future__ import annotations

import functools
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from crdt_kv.errors import CrdtKvError
from crdt_kv.testing.chaos.checker import Verdict, check, read_dump, read_logs
from crdt_kv.testing.chaos.cluster import Cluster, NodeProcess, dump_store, free_ports
from crdt_kv.testing.chaos.nemesis import Nemesis
from crdt_kv.testing.chaos.proxy import FaultProxy
from crdt_kv.testing.chaos.workload import Writer

__all__ = ["DEFAULT_NODE_OPTIONS", "ChaosConfig", "ChaosError", "ChaosReport", "run_chaos"]

DEFAULT_NODE_OPTIONS: Mapping[str, Any] = {
    "sync_interval_s": 1.0,
    "live_idle_timeout_s": 5.0,
    "catch_up": True,
    "catch_up_timeout_s": 3.0,
}
"""``[node]`` settings of every node: short timeouts, so a session held still by the proxy
is noticed in seconds, and a catch-up before a restarted node takes writes."""
READY_TIMEOUT_S = 60.0
POLL_S = 0.2


class ChaosError(CrdtKvError):
    """The run could not be carried out (a node never came up): no verdict."""


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """The knobs of a run (mean intervals are of exponential distributions)."""

    nodes: int = 5
    seconds: float = 300.0
    seed: int = 1
    writers: int = 5
    keys: int = 64
    delete_ratio: float = 0.25
    pause_s: float = 0.01
    kill_interval_s: float = 2.0
    fault_interval_s: float = 1.0
    max_down: int = 2
    converge_timeout_s: float = 120.0
    node_options: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_NODE_OPTIONS))


@dataclass
class ChaosReport:
    """What a run did and found; :attr:`ok` is the verdict."""

    config: ChaosConfig
    workdir: Path
    operations: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    """Refused operations by the node's error (nothing was written)."""
    chaos_s: float = 0.0
    kills: int = 0
    restarts: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    forwarded: int = 0
    convergence_s: float | None = None
    """From healing the network to every store reporting the same digest."""
    restart_s: float = 0.0
    """From healing the network to every node answering again (restarted, caught up)."""
    stop_codes: dict[str, int | None] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    verdict: Verdict | None = None

    @property
    def ok(self) -> bool:
        clean = all(code == 0 for code in self.stop_codes.values()) and bool(self.stop_codes)
        verdict_ok = self.verdict is not None and self.verdict.ok
        return verdict_ok and clean and self.convergence_s is not None and not self.crashes

    def lines(self) -> list[str]:
        c = self.config
        ops = self.operations
        rate = ops["ok"] / self.chaos_s if self.chaos_s else 0.0
        faults = ", ".join(f"{n} {k}" for k, n in sorted(self.faults.items())) or "none"
        why = ", ".join(f"{n} {k}" for k, n in sorted(self.refusals.items()))
        why = f" ({why})" if why else ""
        out = [
            f"chaos: {c.nodes} nodes, {self.chaos_s:.0f} s of chaos, seed {c.seed}, "
            f"{c.writers} writers on {c.keys} keys; files in {self.workdir}",
            f"load: {sum(ops.values())} operations: {ops['ok']} acknowledged "
            f"({rate:.0f}/s), {ops['unknown']} unknown, {ops['refused']} refused{why}, "
            f"{ops['unsent']} unsent",
            f"nemesis: {self.kills} SIGKILLs, {self.restarts} restarts; "
            f"{sum(self.faults.values())} faults ({faults})",
            f"proxy: {self.connections} connections, {self.forwarded / 2**20:.1f} MiB forwarded",
        ]
        if self.convergence_s is None:
            out.append(f"convergence: NOT within {c.converge_timeout_s:g} s of healing")
        else:
            out.append(
                f"convergence: all stores equal {self.convergence_s:.1f} s after healing "
                f"(every node was back up after {self.restart_s:.1f} s)"
            )
        if any(code != 0 for code in self.stop_codes.values()):
            out.append(f"stop: exit codes {self.stop_codes}")
        out.extend(f"crash: {line}" for line in self.crashes)
        if self.verdict is not None:
            out.extend(self.verdict.lines())
        out.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        return out


async def run_chaos(
    config: ChaosConfig, workdir: Path, *, say: Callable[[str], object] = print
) -> ChaosReport:
    """Run the whole scenario in ``workdir`` (created if missing); the report."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    ports = free_ports(2 * config.nodes, rng_start=os.getpid() * 31 + config.seed)
    nodes = [
        NodeProcess(
            f"n{i + 1}",
            workdir / f"n{i + 1}",
            ports[2 * i],
            ports[2 * i + 1],
            options=dict(config.node_options),
        )
        for i in range(config.nodes)
    ]
    cluster = Cluster(nodes)
    targets = {n.name: ("127.0.0.1", n.listen_port) for n in nodes}
    proxy = FaultProxy(targets, rng=random.Random(rng.getrandbits(64)))
    report = ChaosReport(config, workdir)
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(proxy.run)
                await _scenario(config, cluster, proxy=proxy, rng=rng, report=report, say=say)
            except BaseException as exc:  # raised below, not inside an exception group
                error = exc
            nursery.cancel_scope.cancel()
    finally:
        await cluster.kill_all()
        report.crashes = cluster.crashes
    if error is not None:
        raise error
    dumps = {}
    for n in cluster:
        path = workdir / f"dump-{n.name}.json"
        path.write_text(json.dumps(dump_store(n.store_path), sort_keys=True), encoding="utf-8")
        dumps[n.name] = read_dump(path)
    report.verdict = check(dumps, read_logs(sorted(workdir.glob("writer-*.jsonl"))))
    return report


async def _scenario(
    config: ChaosConfig,
    cluster: Cluster,
    *,
    proxy: FaultProxy,
    rng: random.Random,
    report: ChaosReport,
    say: Callable[[str], object],
) -> None:
    """Steps 1 to 4 and the stop of step 5 (see the module doc)."""
    for n in cluster:
        n.peers = [proxy.address(n.name, m.name) for m in cluster if m is not n]
        await n.start()
    await _all_ready(cluster)
    say(f"{config.nodes} nodes up; chaos for {config.seconds:g} s")
    await _chaos(config, cluster, proxy=proxy, rng=rng, report=report, say=say)
    proxy.heal()
    healed = trio.current_time()
    for n in cluster:
        n.exited_by_itself()
        if not n.running:
            await n.start()
    await _all_ready(cluster)
    report.restart_s = trio.current_time() - healed
    say("healed; waiting for convergence")
    report.convergence_s = await _converge(cluster, config.converge_timeout_s, since=healed)
    for n in cluster:
        report.stop_codes[n.name] = await n.stop()
    report.connections, report.forwarded = proxy.connections, proxy.forwarded


async def _all_ready(cluster: Cluster) -> None:
    for n in cluster:
        if not await n.ready(READY_TIMEOUT_S):
            state = "did not answer" if n.running else "exited"
            raise ChaosError(
                f"node {n.name} {state} (waited up to {READY_TIMEOUT_S:g} s): {n.log_tail()}"
            )


async def _chaos(
    config: ChaosConfig,
    cluster: Cluster,
    *,
    proxy: FaultProxy,
    rng: random.Random,
    report: ChaosReport,
    say: Callable[[str], object],
) -> None:
    """Writers and nemesis for ``config.seconds``; then the writers are stopped and every
    node the nemesis killed is restarted."""
    stop = threading.Event()
    keys = [f"k{i:03d}" for i in range(config.keys)]
    addresses = [(n.name, n.client_address) for n in cluster]
    writers = [
        Writer(
            i,
            addresses,
            keys,
            report.workdir / f"writer-{i}.jsonl",
            seed=rng.getrandbits(64),
            stop=stop,
            delete_ratio=config.delete_ratio,
            pause_s=config.pause_s,
        )
        for i in range(config.writers)
    ]
    nemesis = Nemesis(
        cluster,
        proxy,
        rng=random.Random(rng.getrandbits(64)),
        kill_interval_s=config.kill_interval_s,
        fault_interval_s=config.fault_interval_s,
        max_down=config.max_down,
    )
    started = time.monotonic()
    with (report.workdir / "nemesis.log").open("a", encoding="utf-8") as events:

        def log_event(line: str) -> None:
            events.write(f"{time.time():.3f} {line}\n")
            events.flush()

        nemesis.on_event = log_event
        async with trio.open_nursery() as nursery:
            for w in writers:
                nursery.start_soon(functools.partial(trio.to_thread.run_sync, w.run))
            try:
                with trio.move_on_after(config.seconds):
                    await nemesis.run()
            finally:
                stop.set()
    report.chaos_s = time.monotonic() - started
    for w in writers:
        report.operations.update(w.outcomes)
        report.refusals.update(w.refusals)
    report.kills, report.restarts, report.faults = nemesis.kills, nemesis.restarts, nemesis.faults
    say(
        f"chaos over: {report.operations['ok']} acknowledged, {nemesis.kills} kills, "
        f"{sum(nemesis.faults.values())} faults"
    )


async def _converge(cluster: Cluster, timeout_s: float, *, since: float) -> float | None:
    """Seconds from ``since`` until every node reported the same digest (confirmed by the
    next poll, :data:`POLL_S` later); None if that did not happen within ``timeout_s``."""
    started = since
    last: tuple[bytes, float] | None = None
    with trio.move_on_after(timeout_s):
        while True:
            polled = trio.current_time()
            digests = set()
            for n in cluster:
                if n.exited_by_itself():
                    await n.start()
                info = await trio.to_thread.run_sync(n.info)
                digests.add(None if info is None else info["digest"])
            digest = digests.pop() if len(digests) == 1 else None
            if digest is None:
                last = None
            elif last is not None and last[0] == digest:
                return last[1] - started
            else:
                last = (digest, polled)
            await trio.sleep(POLL_S)
    return None
