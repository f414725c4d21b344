"""The trio driver (crdt_kv/net/driver.py): live replication's storage requests have a
lane of their own, and light ones run inline when the store's commit lock is free."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import trio

import crdt_kv
from crdt_kv.net.driver import LinkDriver, StorageWorker
from crdt_kv.protocol import ApplyBatch, InState, LinkState, OutState, ReadLog
from crdt_kv.version import RawEntry


@dataclass(frozen=True)
class Work:
    """A storage request that records when it was performed (``gate``: waits for it)."""

    name: str
    light: bool
    done: list[str]
    gate: threading.Event | None = None

    def perform(self, _replica: object) -> str:
        if self.gate is not None:
            self.gate.wait(5)
        self.done.append(self.name)
        return self.name


async def test_urgent_requests_have_their_own_lane_and_never_wait_behind_the_others() -> None:
    worker = StorageWorker(None)  # type: ignore[arg-type]
    done: list[str] = []
    results: list[object] = []
    gate = threading.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            worker.submit(Work("busy", False, done, gate), lambda r, e: results.append(r))
            await trio.testing.wait_all_tasks_blocked()
            for name, light in (("o1", False), ("o2", False), ("u1", True), ("u2", True)):
                worker.submit(Work(name, light, done), lambda r, e: results.append(r))
            worker.submit(Work("o3", True, done), lambda r, e: results.append(r), urgent=False)
            while done != ["u1", "u2"]:  # performed while "busy" still holds the other lane
                await trio.sleep(0.01)
            assert not worker.idle
            gate.set()
            while not worker.idle:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert done == ["u1", "u2", "busy", "o1", "o2", "o3"]
    assert results == done and worker.performed == 6


def _entries(n: int) -> tuple[RawEntry, ...]:
    return tuple(RawEntry(f"k{i}".encode(), b"v", 1 << 16, "p", False) for i in range(n))


def _driver(in_state: InState) -> LinkDriver:
    link: Any = SimpleNamespace(session=SimpleNamespace(in_state=in_state))
    return LinkDriver(link, worker=StorageWorker(None))  # type: ignore[arg-type]


def test_live_applies_and_tail_reads_are_urgent_catch_up_work_is_not() -> None:
    big = ApplyBatch(_entries(100), ("p", b"\x01", 100))
    small = ApplyBatch(_entries(2), ("p", b"\x01", 2))
    tail = ReadLog(0, 1000, 1 << 20, None, None, tail=True)
    catch_up = ReadLog(0, 1000, 1 << 20, None, None)
    live, catching_up = _driver(InState.LIVE), _driver(InState.REQUESTED)
    assert live.urgent(big) and live.urgent(small) and live.urgent(tail)
    assert not live.urgent(catch_up)
    assert not catching_up.urgent(big) and not catching_up.urgent(catch_up)
    assert catching_up.urgent(small) and catching_up.urgent(tail)


def test_a_light_request_runs_inline_only_when_the_commit_lock_is_free(tmp_path: Any) -> None:
    store = crdt_kv.open(str(tmp_path / "s"), backend="memory")
    link: Any = SimpleNamespace(replica=store)
    driver = LinkDriver(link, worker=StorageWorker(store))
    ran: list[str] = []
    driver._perform_inline = lambda r: ran.append(r.name)  # type: ignore[method-assign, assignment, union-attr]
    request = Work("light", True, [])
    assert driver._inline(request)  # type: ignore[arg-type]
    assert ran == ["light"]
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:  # another thread in the middle of a commit or a read
        with store._commit_lock():
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        assert not driver._inline(request)  # type: ignore[arg-type]
        assert ran == ["light"]
    finally:
        release.set()
        t.join()
    assert driver._inline(request)  # type: ignore[arg-type]
    assert ran == ["light", "light"]
    store.close()


def test_a_commit_reaches_only_links_it_can_give_work() -> None:
    """A live session whose peer does not tail us yet is not told of a commit at all; one
    that tails us is told and its task woken; a link between sessions is told (a waiting
    round may start early) but its task is woken only if that changed something."""
    told: list[float] = []

    def link_for(out_state: OutState, state: LinkState, changed: bool = True) -> Any:
        def local_changed(now: float) -> bool:
            told.append(now)
            return changed

        session = SimpleNamespace(live=True, out_state=out_state)
        config = SimpleNamespace(push_delay_s=0.0)
        return SimpleNamespace(
            session=session, state=state, config=config, local_changed=local_changed
        )

    async def main() -> None:
        quiet = LinkDriver(link_for(OutState.WAITING, LinkState.CONNECTED), worker=None)  # type: ignore[arg-type]
        quiet.local_changed()
        assert told == [] and not quiet._wake.is_set()
        tailing = LinkDriver(link_for(OutState.LIVE, LinkState.CONNECTED), worker=None)  # type: ignore[arg-type]
        tailing.local_changed()
        assert len(told) == 1 and tailing._wake.is_set()
        waiting = LinkDriver(link_for(OutState.WAITING, LinkState.WAITING, False), worker=None)  # type: ignore[arg-type]
        waiting.local_changed()
        assert len(told) == 2 and not waiting._wake.is_set()

    trio.run(main)
