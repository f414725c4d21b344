"""Range-fingerprint repair (``spec/reconcile.md``): find and ship exactly the keys two
replicas hold differently, in a few round trips, whatever their change logs say.

The core is sans-I/O: :class:`Reconciler` (``machine.py``) turns bytes into bytes and
storage requests (``work.py``) against a :class:`RangeSource` (``source.py``). The trio
shell :func:`crdt_kv.repair.api.reconcile` (exported as ``crdt_kv.reconcile``) drives it
over any stream and is loaded on first access, so importing this package never loads trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crdt_kv.repair.machine import Reconciler
from crdt_kv.repair.report import ReconcileReport
from crdt_kv.repair.source import RangeSource

if TYPE_CHECKING:
    from crdt_kv.repair.api import reconcile

__all__ = ["RangeSource", "ReconcileReport", "Reconciler", "reconcile"]


def __getattr__(name: str) -> Any:
    """Load :func:`reconcile` (trio) on first access."""
    if name != "reconcile":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = importlib.import_module("crdt_kv.repair.api").reconcile
    globals()[name] = value
    return value
