"""What a run found: the oracle check, divergence sampling and the :class:`SimResult`
(a mixin of :class:`~crdt_kv.sim.runner.Simulation`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from crdt_kv.layout import unpack_u64
from crdt_kv.layout_fingerprints import META_QUARANTINE_HOLD
from crdt_kv.sim.causal_oracle import CausalOracle
from crdt_kv.sim.clocks import VirtualTime
from crdt_kv.sim.config import MAX_REPORTED_MISMATCHES, SimConfig, SimResult
from crdt_kv.sim.links import LinkShell
from crdt_kv.sim.nodes import SimNode
from crdt_kv.sim.oracle import Mismatch, Oracle
from crdt_kv.sim.stampwatch import StampWatch

__all__ = ["Reporting"]


class Reporting:
    """Checks and results; the simulation provides the state they read."""

    cfg: SimConfig
    nodes: list[SimNode]
    links: LinkShell
    oracle: Oracle
    causal: CausalOracle | None
    watch: StampWatch | None
    c: dict[str, int]
    failures: dict[str, int]
    vt: VirtualTime
    events: int
    error: str | None
    screened: bool
    screen_error: str | None
    command: str
    _heal_us: int | None
    _converged_us: int | None
    _pending: dict[tuple[str, int, str, bool, bytes], Any]
    _divergence: list[tuple[float, int]]
    _div_seen: dict[int, int]
    _div_state: dict[bytes, dict[int, tuple[Any, ...]]]
    _div_bad: set[bytes]
    _div_members: tuple[int, ...] | None

    @property
    def trace_hash(self) -> str:
        raise NotImplementedError

    @property
    def now_ms(self) -> float:
        raise NotImplementedError

    def push(self, t_us: int, fn: Any, arg: Any) -> None:
        raise NotImplementedError

    def live_nodes(self) -> list[SimNode]:
        """Nodes that are up and not rogue: the ones that must converge."""
        return [n for n in self.nodes if n.state == "up" and not n.rogue]

    def digests_equal(self) -> bool:
        """True when every live replica has the same digest."""
        digests = {n.store.digest() for n in self.live_nodes() if n.store is not None}
        return len(digests) <= 1

    def _sample(self, _: object) -> None:
        self._divergence.append((self.now_ms, self.divergent_keys()))
        if self.cfg.sample_ms:
            self.push(self.vt.now + int(self.cfg.sample_ms * 1000), self._sample, None)

    def divergent_keys(self) -> int:
        """How many keys are not held identically by every live replica (incremental)."""
        live = self.live_nodes()
        state, bad = self._div_state, self._div_bad
        touched: set[bytes] = set()
        for n in live:
            store = n.store
            assert store is not None
            since = self._div_seen.get(n.index, 0)
            for r in store.raw_changes(since):
                held = (r.hlc, r.peer, r.deleted, r.value, r.others, r.context)
                state.setdefault(r.key, {})[n.index] = held
                touched.add(r.key)
            self._div_seen[n.index] = store.last_seq
        ids = [n.index for n in live]
        members = tuple(ids)
        if self._div_members != members:
            self._div_members = members
            touched = set(state)
        for k in touched:
            per = state[k]
            first = per.get(ids[0]) if ids else None
            if first is None or any(per.get(i) != first for i in ids):
                bad.add(k)
            else:
                bad.discard(k)
        return len(bad)

    def check(self) -> list[Mismatch]:
        """Compare every live replica with the oracle (in ``siblings`` mode the causal
        one, which also compares the replicas' sibling orders with each other).

        Tombstones below the highest horizon of the live replicas may be gone anywhere:
        pruning and repair drops spread past a lower horizon (see the oracles' ``check``).
        """
        out: list[Mismatch] = []
        rogues = [n.peer_id for n in self.nodes if n.rogue]
        horizon = max((n.store.gc_horizon for n in self.live_nodes() if n.store), default=0)
        orders: dict[bytes, tuple[str, list[tuple[str, int]]]] = {}
        for n in self.live_nodes():
            assert n.store is not None
            if self.causal is not None:
                out.extend(
                    self.causal.check(
                        n.peer_id, n.store, exclude_peers=rogues, orders=orders, horizon=horizon
                    )
                )
            else:
                out.extend(
                    self.oracle.check(n.peer_id, n.store, exclude_peers=rogues, horizon=horizon)
                )
        if self.watch is not None:
            out.extend(
                Mismatch(r.node, r.key, "resurrected", f"stamp >= {r.before}", f"stamp {r.after}")
                for r in self.watch.regressions
            )
        return out

    def result(self, *, check: bool = True) -> SimResult:
        """Build the :class:`SimResult` (running the oracle check unless ``check=False``)."""
        cfg = self.cfg
        for stats in self.links.session_stats():
            self.c["skew_rejections"] += stats.skew_rejected
            self.c["divergences"] += stats.divergences
            self.c["repairs"] += stats.repairs
            stats.skew_rejected = stats.divergences = stats.repairs = 0
        mismatches = self.check() if check and self.error is None else []
        kinds: dict[str, int] = {}
        for m in mismatches:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
        converged = self.error is None and self._converged_us is not None
        if self._heal_us is None and check and self.error is None:
            converged = self.digests_equal()
        rogues = [n.peer_id for n in self.nodes if n.rogue]
        checks = {
            "converged": converged,
            "oracle_match": self.error is None and not mismatches,
            "hlc_monotonic": self.c["hlc_violations"] == 0,
        }
        if cfg.linger_ms > 0:
            checks["quiet_sessions_kept"] = self.c["quiet_timeouts"] == 0
        if rogues:
            checks["rogue_refused"] = self.c["skew_rejections"] > 0
        if self.screened:
            checks["resolver_screened"] = self.screen_error is None
        if check and self.error is None and self._rotted():
            checks["quarantine_released"] = self._quarantine_released()
        oracle_match = checks["oracle_match"]
        heal = self._heal_us if self._heal_us is not None else self.vt.now
        conv = None
        if self._converged_us is not None:
            conv = (self._converged_us - heal) / 1000
        c = self.c
        return SimResult(
            scenario=cfg.scenario,
            seed=cfg.seed,
            nodes=cfg.nodes,
            ops=cfg.ops,
            backend=cfg.backend,
            conflicts=cfg.conflicts,
            keys=cfg.effective_keys(),
            resolver=cfg.resolver_name,
            converged=converged,
            oracle_match=oracle_match,
            ok=all(checks.values()) and self.error is None,
            trace_hash=self.trace_hash,
            messages=c["messages"],
            bytes=c["bytes"],
            virtual_time_ms=self.vt.now / 1000,
            convergence_time_ms=conv,
            heal_time_ms=heal / 1000,
            events=self.events,
            writes=c["writes"],
            reads=c["reads"],
            merges=c["merges"],
            sibling_keys=self.causal.sibling_keys() if check and self.causal else 0,
            sessions=c["sessions"],
            session_failures=dict(sorted(self.failures.items())),
            timeouts=c["timeouts"],
            quiet_timeouts=c["quiet_timeouts"],
            cuts=c["cuts"],
            connect_failures=c["connect_failures"],
            messages_lost=c["lost"],
            messages_duplicated=c["duplicated"],
            messages_reordered=c["reordered"],
            messages_partitioned=c["partitioned"],
            messages_late=c["late"],
            crashes=c["crashes"],
            power_cuts=c["power_cuts"],
            writes_lost_unsynced=self._vanished(),
            restarts=c["restarts"],
            joins=c["joins"],
            partitions=c["partitions"],
            skew_rejections=c["skew_rejections"],
            divergences=c["divergences"],
            repairs=c["repairs"],
            rogue_nodes=rogues,
            rogue_writes=c["rogue_writes"],
            writes_fenced=c["writes_fenced"],
            hlc_ties=self.causal.ties if self.causal is not None else self.oracle.ties,
            hlc_violations=c["hlc_violations"],
            checks=checks,
            mismatch_count=len(mismatches),
            mismatch_kinds=kinds,
            mismatches=[asdict(m) for m in mismatches[:MAX_REPORTED_MISMATCHES]],
            divergence=list(self._divergence),
            error=self.error,
            repro_command=self.command,
        )

    def _rotted(self) -> bool:
        c = self.c
        return bool(c["rotten"] + c["garbled"] + c["rotten_everywhere"])

    def _quarantine_released(self) -> bool:
        """After rot: no live node keeps a key in quarantine, and each node's horizon has
        passed the hold its quarantine put on its gossip (else collection froze)."""
        for n in self.live_nodes():
            store = n.store
            assert store is not None
            if store.statistics().quarantined:
                return False
            held = store.backend.get(META_QUARANTINE_HOLD)
            if held is not None and store.gc_horizon <= unpack_u64(held):
                return False
        return True

    def _vanished(self) -> int:
        """Acknowledged writes that never became durable anywhere and left no trace: the
        converged state holds an older version of their key (power cuts lose them by
        contract when ``sync_writes=False``)."""
        if self.causal is not None:
            return self.causal.vanished()
        live = [n.store for n in self.live_nodes() if n.store is not None]
        if not self._pending or not live:
            return 0
        store = live[0]
        lost = 0
        for key, hlc, peer, _, _ in self._pending:
            e = store.entry(key)
            if e is None or (e.hlc, e.peer) < (hlc, peer):
                lost += 1
        return lost
