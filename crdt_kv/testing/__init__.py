"""Helpers for testing code built on crdt_kv: a hand-moved clock, a resolver checker.

- :class:`ManualClock` (:mod:`crdt_kv.testing.clocks`): the wall clock a test moves by
  hand, for ``crdt_kv.open(..., clock=...)``. Dependency-free.
- :func:`check_resolver` and the :func:`entries` strategy
  (:mod:`crdt_kv.testing.resolvers`): property-test a conflict resolver. They need
  hypothesis, so they are loaded on first access (PEP 562): a test that only wants the
  clock does not pay for importing hypothesis.
- :func:`screen_resolver` (:mod:`crdt_kv.testing.screen`): a seeded check of a resolver
  in milliseconds, without hypothesis (the simulator runs it before every run).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crdt_kv.testing.clocks import DEFAULT_START_MS, ManualClock

if TYPE_CHECKING:
    from crdt_kv.testing.resolvers import check_resolver, entries
    from crdt_kv.testing.screen import screen_resolver

__all__ = ["DEFAULT_START_MS", "ManualClock", "check_resolver", "entries", "screen_resolver"]

_LAZY = {
    "check_resolver": "crdt_kv.testing.resolvers",
    "entries": "crdt_kv.testing.resolvers",
    "screen_resolver": "crdt_kv.testing.screen",
}


def __getattr__(name: str) -> Any:
    """Load the hypothesis-based helpers on first access and cache them here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Every public name, loaded or not."""
    return sorted(set(globals()) | set(__all__))
