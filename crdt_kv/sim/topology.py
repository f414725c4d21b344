"""Who links to whom, and with which policy (a mixin of
:class:`~crdt_kv.sim.runner.Simulation`): the production :class:`LinkConfig` at the
simulation's time scale, the live ring and the gossip round targets drawn from the seed,
and the dialing links each running node opens."""

from __future__ import annotations

import random

from crdt_kv.protocol import LinkConfig, LinkRole
from crdt_kv.sim.config import SimConfig
from crdt_kv.sim.links import LinkShell
from crdt_kv.sim.nodes import UP, SimNode

__all__ = ["Topology"]


class Topology:
    """Link targets and configs; the simulation provides the state they read."""

    cfg: SimConfig
    nodes: list[SimNode]
    links: LinkShell
    sched_rng: random.Random
    _ring: dict[int, int] | None
    _auto: bool
    _targets: dict[int, tuple[list[int], list[int]]]
    _live_cfg: LinkConfig
    _round_cfg: LinkConfig

    def _link_config(
        self, *, live: bool, mode: str = "both", period_ms: float | None = None
    ) -> LinkConfig:
        """The production policy, with the simulation's time scale (rounds every
        ``period_ms``, default ``gossip_ms``, down to half that while they move data)."""
        cfg = self.cfg
        period = cfg.gossip_ms if period_ms is None else period_ms
        return LinkConfig(
            mode=mode,
            live=live,
            cluster_id="sim",
            handshake_timeout_s=cfg.idle_timeout_ms / 1000,
            idle_timeout_s=cfg.idle_timeout_ms / 1000,
            live_idle_timeout_s=cfg.idle_timeout_ms / 1000,
            verify_interval_s=cfg.verify_interval_ms / 1000,
            sync_interval_s=period / 1000,
            min_sync_interval_s=period / 2000,
            backoff_base_s=cfg.backoff_base_ms / 1000,
            backoff_max_s=cfg.backoff_max_ms / 1000,
            push_delay_s=cfg.live_flush_ms / 1000,
            max_batch_entries=cfg.max_batch_entries,
            window=cfg.window,
        )

    def _round_targets(self, i: int) -> list[int]:
        """Peers node ``i`` syncs with in rounds: its successor on a ring in an order
        drawn from the seed (connected, one link per node, like the old one partner per
        gossip period), plus ``effective_fanout()`` more peers drawn from the seed."""
        n = len(self.nodes)
        if self._ring is None:
            order = list(range(n))
            self.sched_rng.shuffle(order)
            self._ring = {order[k]: order[(k + 1) % n] for k in range(n)}
        live = set(self._live_targets(i))
        picks = [self._ring[i]]
        others = [j for j in range(n) if j != i and j not in picks]
        self.sched_rng.shuffle(others)
        picks.extend(others[: self.cfg.effective_fanout()])
        return [j for j in picks if j not in live]

    def _live_targets(self, i: int) -> list[int]:
        ring = self.cfg.live_ring
        n = len(self.nodes)
        ring_n = n if ring is None else min(ring, n)
        if i >= ring_n:
            return []
        k = min(self.cfg.live_peers, ring_n - 1)
        return [(i + d) % ring_n for d in range(1, k + 1)]

    def _start_links(self, node: SimNode) -> None:
        """Open the node's dialing links (a running node's configured peers)."""
        if not self._auto or node.state != UP:
            return
        i = node.index
        targets = self._targets.get(i)
        if targets is None:
            targets = self._targets[i] = (self._live_targets(i), self._round_targets(i))
        live, rounds = targets
        for j in live:
            self.links.add(node, role=LinkRole.DIAL, config=self._live_cfg, target=j, kind="live")
        for j in rounds:
            self.links.add(
                node, role=LinkRole.DIAL, config=self._round_cfg, target=j, kind="gossip"
            )
