"""The resurrection watch: a key's state stamp on one node never goes back."""

from __future__ import annotations

from crdt_kv.sim.stampwatch import StampWatch, state_stamp
from crdt_kv.version import Entry


def _e(
    key: str, hlc: int, *, others: tuple[Entry, ...] = (), ctx: tuple[tuple[str, int], ...] = ()
) -> Entry:
    return Entry(key, "v", hlc, "a", False, others=others, context=ctx)


def test_state_stamp_is_the_largest_of_versions_and_context() -> None:
    assert state_stamp(_e("k", 5)) == 5
    assert state_stamp(_e("k", 5, others=(_e("k", 9),))) == 9
    assert state_stamp(_e("k", 5, ctx=(("b", 12),))) == 12


def test_a_lower_stamp_after_a_higher_one_is_a_regression() -> None:
    w = StampWatch()
    seen = w.listener("n1")
    seen(_e("k", 10))
    seen(_e("k", 11))
    seen(_e("j", 3))
    assert w.count == 0
    seen(_e("k", 7))  # an older value applied after newer states: a resurrection
    assert w.count == 1
    assert w.regressions[0].describe() == "n1: key 'k' went back from stamp 11 to 7"


def test_nodes_are_watched_separately_and_forget_starts_afresh() -> None:
    w = StampWatch()
    w.listener("n1")(_e("k", 10))
    w.listener("n2")(_e("k", 4))
    assert w.count == 0
    w.forget("n1")
    w.listener("n1")(_e("k", 2))
    assert w.count == 0


def test_a_key_lost_everywhere_is_forgotten_on_every_node() -> None:
    w = StampWatch()
    w.listener("n1")(_e("k", 10))
    w.listener("n2")(_e("k", 10))
    w.listener("n2")(_e("j", 10))
    w.forget_key(b"k")
    w.listener("n1")(_e("k", 3))
    w.listener("n2")(_e("k", 3))
    assert w.count == 0
    w.listener("n2")(_e("j", 3))
    assert w.count == 1
