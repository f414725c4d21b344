"""Multi-process chaos testing: real ``crdt-kv serve`` nodes behind a fault-injecting
proxy, a nemesis that SIGKILLs them, writers that log every acknowledged write, and a
checker independent of the store code.

``python -m crdt_kv.testing.chaos --seconds 300`` runs it from the command line (``make
chaos``); :func:`run_chaos` with a :class:`ChaosConfig` from code (``tests/test_chaos.py``).
It lives in the package, not under ``tests/``, because it is a tool an operator can run
against this release on their own machine, like the simulator. Its parts:
:mod:`.proxy`, :mod:`.cluster`, :mod:`.workload`, :mod:`.nemesis`, :mod:`.checker`,
:mod:`.run`.
"""

from __future__ import annotations

from crdt_kv.testing.chaos.checker import Verdict, check
from crdt_kv.testing.chaos.run import ChaosConfig, ChaosError, ChaosReport, run_chaos

__all__ = ["ChaosConfig", "ChaosError", "ChaosReport", "Verdict", "check", "run_chaos"]
