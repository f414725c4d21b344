"""Shared test configuration: hypothesis profiles and small fixtures.

The hand-moved clock is :class:`crdt_kv.testing.ManualClock` (import it from there).

Profiles: ``dev`` (default, quick) and ``ci`` (more examples, no deadline, prints the
reproduction blob of a failure). Choose with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import crdt_kv
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def clock() -> ManualClock:
    """A fresh :class:`crdt_kv.testing.ManualClock` at its default start."""
    return ManualClock()


@pytest.fixture(params=["rocksdb", "memory", "sqlite"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(tmp_path: object, clock: ManualClock) -> Iterator[Callable[..., object]]:
    """Open stores in a temp dir; every store opened is closed at teardown."""
    import crdt_kv

    opened: list[crdt_kv.Store] = []
    counter = iter(range(1_000_000))

    def make(backend: str = "memory", **kw: object) -> crdt_kv.Store:
        path = kw.pop("path", None) or os.path.join(str(tmp_path), f"s{next(counter)}")
        kw.setdefault("clock", clock)
        s = crdt_kv.open(path, backend=backend, **kw)  # type: ignore[arg-type]
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture(params=["memory", "rocksdb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``make(peer, **options)``: stores on one shared hand-moved clock (``make.clock``);
    the parameter picks the backend; all are closed afterwards."""
    clock = ManualClock()
    opened: list[Store] = []

    def make(peer: str, **kw: Any) -> Store:
        if request.param == "memory":
            s = crdt_kv.open(backend="memory", peer_id=peer, clock=clock, **kw)
        else:
            s = crdt_kv.open(tmp_path / peer, backend="rocksdb", peer_id=peer, clock=clock, **kw)
        opened.append(s)
        return s

    make.clock = clock  # type: ignore[attr-defined]
    yield make
    for s in opened:
        s.close()


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    """RocksDB stores on the system clock, by peer id (reopenable by name); all closed at
    teardown. Used by the ``test_net_*`` modules."""
    opened: list[Store] = []

    def make(peer: str) -> Store:
        s = crdt_kv.open(tmp_path / peer, backend="rocksdb", peer_id=peer)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()
