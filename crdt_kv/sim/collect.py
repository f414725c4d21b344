"""Tombstone collection in the simulator (a mixin of
:class:`~crdt_kv.sim.runner.Simulation`): each running node's
:class:`~crdt_kv.protocol.GcPolicy` on the virtual clock, its requests performed inline,
exactly as the trio node honours it on its storage worker. Off unless
``SimConfig.gc_grace_ms`` is set (small grace and expiry let scenarios exercise it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from crdt_kv.protocol import GcPolicy
from crdt_kv.sim.config import SimConfig
from crdt_kv.sim.nodes import UP, SimNode

__all__ = ["Collection"]

US = 1_000_000


class Collection:
    """Per-node collection timers; the simulation provides the state they read."""

    cfg: SimConfig
    c: dict[str, int]
    vt: Any

    push: Callable[[int, Callable[[Any], None], Any], None]
    record: Callable[..., None]

    def _gc_open(self, node: SimNode) -> None:
        """A node's store opened: a fresh policy (its first collection one interval on)."""
        cfg = self.cfg
        node.gc_sched = None
        if cfg.gc_grace_ms is None:
            node.gc = None
            return
        node.gc = GcPolicy(
            now=self.vt.now / US,
            grace_s=cfg.gc_grace_ms / 1000,
            interval_s=cfg.gc_interval_ms / 1000,
            scrub_buckets=cfg.scrub_buckets,
        )
        self._gc_arm(node)

    def gc_event(self, node: SimNode, event: object) -> None:
        """A link of ``node`` reported ``event`` (a completed pull may move the horizon)."""
        if node.gc is not None:
            node.gc.link_event(event, self.vt.now / US)
            self._gc_arm(node)

    def _gc_arm(self, node: SimNode) -> None:
        policy = node.gc
        t = None if policy is None else policy.get_timer()
        if t is None:
            return
        t_us = max(self.vt.now, math.ceil(t * US))
        while t_us / US < t:
            t_us += 1
        if node.gc_sched is not None and node.gc_sched <= t_us:
            return
        node.gc_sched = t_us
        self.push(t_us, self._gc_fire, (node, policy, t_us))

    def _gc_fire(self, arg: tuple[SimNode, GcPolicy, int]) -> None:
        node, policy, t_us = arg
        if node.gc is not policy or node.gc_sched != t_us:
            return
        node.gc_sched = None
        if node.state != UP or node.store is None:
            return
        request = policy.handle_timer(self.vt.now / US)
        if request is not None:
            result = request.perform(node.store)
            policy.storage_done(request, result)
            self.c["collected"] += result.collected
            self.c["quarantined"] += result.quarantined
            self.record(f"G{node.index} {result.horizon} {result.collected}\n")
        self._gc_arm(node)
