"""The nemesis of a chaos run: SIGKILLs and restarts nodes, and injects network faults.

Two schedules, both drawn from one seeded :class:`random.Random` (the run is not
deterministic, since processes and the kernel are not, but its choices are): kills at
exponentially distributed intervals (a running node, at most ``max_down`` down at once,
restarted on the same store after a random downtime), and faults at exponentially
distributed intervals, each on a random pair of nodes and lifted after a random while:

======================  ===================================================================
kind                    what the proxy does
======================  ===================================================================
``delay``               latency (10-300 ms, plus jitter) on one direction
``oneway``              one direction blocked (a one-way partition), the other flowing
``partition``           both directions blocked
``stall``               one open connection held still, both directions
``drop``                the open connections between the pair closed (FIN)
``cut``                 the open connections between the pair reset (RST)
======================  ===================================================================
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from crdt_kv.testing.chaos.cluster import Cluster, NodeProcess
from crdt_kv.testing.chaos.proxy import FaultProxy

__all__ = ["FAULT_KINDS", "Nemesis"]

FAULT_KINDS = ("delay", "oneway", "partition", "stall", "drop", "cut")


class Nemesis:
    """Runs both schedules in :meth:`run` until cancelled; counts in ``kills``,
    ``restarts`` and ``faults`` (by kind). ``on_event`` gets one line per action."""

    def __init__(
        self,
        cluster: Cluster,
        proxy: FaultProxy,
        *,
        rng: random.Random,
        kill_interval_s: float,
        fault_interval_s: float,
        max_down: int = 2,
        downtime_s: tuple[float, float] = (0.1, 2.0),
        fault_time_s: tuple[float, float] = (0.5, 6.0),
        on_event: Callable[[str], object] = lambda line: None,
    ) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.rng = rng
        self.kill_interval_s = kill_interval_s
        self.fault_interval_s = fault_interval_s
        self.max_down = max_down
        self.downtime_s = downtime_s
        self.fault_time_s = fault_time_s
        self.on_event = on_event
        self.kills = 0
        self.restarts = 0
        self.faults: Counter[str] = Counter()
        self._down: set[str] = set()

    async def run(self) -> None:
        """Kill and fault until cancelled; nodes being restarted are restarted first."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every, self.kill_interval_s, self._kill_one, nursery)
            nursery.start_soon(self._every, self.fault_interval_s, self._fault_one, nursery)
            nursery.start_soon(self._every, 0.5, self._revive_crashed, nursery)

    async def _every(
        self,
        mean_s: float,
        action: Callable[[trio.Nursery], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> None:
        if mean_s <= 0:
            return
        while True:
            await trio.sleep(self.rng.expovariate(1 / mean_s))
            await action(nursery)

    # --- kills ----------------------------------------------------------------------------

    async def _kill_one(self, nursery: trio.Nursery) -> None:
        candidates = [n for n in self.cluster.running() if n.name not in self._down]
        if not candidates or len(self._down) >= self.max_down:
            return
        node = self.rng.choice(candidates)
        self._down.add(node.name)
        await node.kill()
        self.kills += 1
        downtime = self.rng.uniform(*self.downtime_s)
        self.on_event(f"kill {node.name} (down {downtime:.1f} s)")
        nursery.start_soon(self._restart_later, node, downtime)

    async def _restart_later(self, node: NodeProcess, downtime_s: float) -> None:
        try:
            await trio.sleep(downtime_s)
        finally:
            with trio.CancelScope(shield=True):
                if not node.running:
                    await node.start()
                    self.restarts += 1
                self._down.discard(node.name)

    async def _revive_crashed(self, nursery: trio.Nursery) -> None:
        for node in self.cluster:
            if node.name not in self._down and node.exited_by_itself():
                self.on_event(f"{node.name} exited by itself; restarting")
                await node.start()

    # --- faults ---------------------------------------------------------------------------

    async def _fault_one(self, nursery: trio.Nursery) -> None:
        kind = self.rng.choice(FAULT_KINDS)
        a, b = self.rng.sample(sorted(self.cluster.nodes), 2)
        proxy = self.proxy
        lift: Callable[[], object] | None = None
        if kind == "delay":
            proxy.set_delay(a, b, self.rng.uniform(0.01, 0.3), self.rng.uniform(0, 0.05))
            lift = functools.partial(proxy.set_delay, a, b, 0.0)
        elif kind in ("oneway", "partition"):
            links = [(a, b)] if kind == "oneway" else [(a, b), (b, a)]
            for link in links:
                proxy.block(*link)
            lift = functools.partial(_unblock, proxy, links)
        elif kind == "stall":
            pipes = proxy.between(a, b)
            if not pipes:
                return
            pipe = self.rng.choice(pipes)
            proxy.stall(pipe)
            lift = functools.partial(proxy.stall, pipe, False)
        elif proxy.close(proxy.between(a, b), reset=kind == "cut") == 0:
            return
        self.faults[kind] += 1
        self.on_event(f"{kind} {a}->{b}")
        if lift is not None:
            nursery.start_soon(self._lift_later, lift, self.rng.uniform(*self.fault_time_s))

    async def _lift_later(self, lift: Callable[[], object], after_s: float) -> None:
        try:
            await trio.sleep(after_s)
        finally:
            lift()


def _unblock(proxy: FaultProxy, links: list[tuple[str, str]]) -> None:
    for link in links:
        proxy.block(*link, blocked=False)
