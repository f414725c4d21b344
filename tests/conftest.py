"""Shared test configuration: hypothesis profiles and small fixtures.

Profiles: ``dev`` (default, quick) and ``ci`` (more examples, no deadline, prints the
reproduction blob of a failure). Choose with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

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


class ManualClock:
    """A wall clock (integer ms) the test moves by hand."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> ManualClock:
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
