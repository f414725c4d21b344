"""The hybrid logical clock: monotonicity, the paper's rules, overflow, skew, packing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt_kv import ClockSkewError
from crdt_kv.hlc import HLC, LOGICAL_BITS, MAX_LOGICAL, MAX_WALL, pack, unpack
from crdt_kv.testing import ManualClock

MAX_STAMP = (1 << 64) - 1
BASE = 1_700_000_000_000


def paper_send(l: int, c: int, pt: int) -> tuple[int, int]:  # noqa: E741 - the paper's name
    """Kulkarni et al. 2014, send/local event, with an overflowing counter carried."""
    l2 = max(l, pt)
    c2 = c + 1 if l2 == l else 0
    return (l2 + 1, 0) if c2 > MAX_LOGICAL else (l2, c2)


def paper_receive(l: int, c: int, lm: int, cm: int, pt: int) -> tuple[int, int]:  # noqa: E741
    """Kulkarni et al. 2014, receive event, with an overflowing counter carried."""
    l2 = max(l, lm, pt)
    if l2 == l and l2 == lm:
        c2 = max(c, cm) + 1
    elif l2 == l:
        c2 = c + 1
    elif l2 == lm:
        c2 = cm + 1
    else:
        c2 = 0
    return (l2 + 1, 0) if c2 > MAX_LOGICAL else (l2, c2)


# --- now() -----------------------------------------------------------------------------

steps = st.lists(
    st.one_of(
        st.just(0),  # frozen
        st.integers(min_value=1, max_value=5),  # forwards
        st.integers(min_value=-10_000, max_value=-1),  # backwards jump
        st.integers(min_value=5, max_value=100_000),  # big forward jump
    ),
    min_size=1,
    max_size=200,
)


@given(steps=steps, start_logical=st.integers(min_value=0, max_value=MAX_LOGICAL))
def test_now_is_strictly_monotonic_and_follows_the_paper(
    steps: list[int], start_logical: int
) -> None:
    clock = ManualClock(BASE)
    hlc = HLC(clock, last=pack(BASE, start_logical))
    l, c = BASE, start_logical  # noqa: E741
    prev = hlc.last
    for step in steps:
        clock.now += step
        stamp = hlc.now()
        assert stamp > prev, f"stamp {stamp} not above {prev} after clock step {step}"
        l, c = paper_send(l, c, clock.now)  # noqa: E741
        assert unpack(stamp) == (l, c)
        assert hlc.last == stamp
        assert stamp >> LOGICAL_BITS >= clock.now  # never behind the wall clock
        prev = stamp


def test_now_with_frozen_clock_counts_then_carries_and_never_repeats() -> None:
    clock = ManualClock(BASE)
    hlc = HLC(clock)
    stamps = [hlc.now() for _ in range(MAX_LOGICAL + 10)]
    assert stamps[0] == pack(BASE, 0)
    assert stamps[MAX_LOGICAL] == pack(BASE, MAX_LOGICAL)
    assert stamps[MAX_LOGICAL + 1] == pack(BASE + 1, 0)  # carried into the wall
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert len(set(stamps)) == len(stamps)


def test_now_after_clock_steps_back_continues_above_last() -> None:
    clock = ManualClock(BASE)
    hlc = HLC(clock)
    before = hlc.now()
    clock.now = BASE - 60_000
    after = hlc.now()
    assert after == before + 1
    clock.now = BASE + 5
    assert hlc.now() == pack(BASE + 5, 0)  # wall caught up: counter resets


def test_seeded_last_survives_a_restart_with_an_earlier_clock() -> None:
    persisted = pack(BASE, 7)
    hlc = HLC(ManualClock(BASE - 3_600_000), last=persisted)
    assert hlc.now() == pack(BASE, 8)


def test_now_refuses_to_exhaust_64_bits() -> None:
    hlc = HLC(ManualClock(5), last=MAX_STAMP)
    with pytest.raises(OverflowError):
        hlc.now()
    assert hlc.last == MAX_STAMP


# --- update(): the receive rule ----------------------------------------------------------

LOGICAL = st.integers(min_value=0, max_value=MAX_LOGICAL)


@pytest.mark.parametrize(
    ("case", "lo", "c", "lm", "cm", "pt", "expected"),
    [
        ("l and l_m max", BASE + 10, 4, BASE + 10, 9, BASE, (BASE + 10, 10)),
        ("l and l_m max, ours bigger", BASE + 10, 9, BASE + 10, 4, BASE, (BASE + 10, 10)),
        ("only l max", BASE + 10, 4, BASE + 5, 99, BASE, (BASE + 10, 5)),
        ("only l_m max", BASE + 5, 99, BASE + 10, 4, BASE, (BASE + 10, 5)),
        ("only pt max", BASE + 5, 99, BASE + 6, 77, BASE + 20, (BASE + 20, 0)),
        ("pt ties l (ours counts)", BASE + 20, 3, BASE + 6, 77, BASE + 20, (BASE + 20, 4)),
        ("pt ties l_m (theirs counts)", BASE + 6, 3, BASE + 20, 77, BASE + 20, (BASE + 20, 78)),
        ("all three equal", BASE, 3, BASE, 8, BASE, (BASE, 9)),
    ],
)
def test_update_follows_each_receive_case(
    case: str, lo: int, c: int, lm: int, cm: int, pt: int, expected: tuple[int, int]
) -> None:
    hlc = HLC(ManualClock(pt), max_offset_ms=500, last=pack(lo, c))
    stamp = hlc.update(pack(lm, cm))
    assert unpack(stamp) == expected, case
    assert hlc.last == stamp


@given(
    l=st.integers(min_value=BASE - 1000, max_value=BASE + 1000),
    c=LOGICAL,
    lm=st.integers(min_value=BASE - 1000, max_value=BASE + 1000),
    cm=LOGICAL,
    pt=st.integers(min_value=BASE - 1000, max_value=BASE + 1000),
)
def test_update_matches_the_paper(l: int, c: int, lm: int, cm: int, pt: int) -> None:  # noqa: E741
    hlc = HLC(ManualClock(pt), max_offset_ms=2000, last=pack(l, c))
    remote = pack(lm, cm)
    stamp = hlc.update(remote)
    assert unpack(stamp) == paper_receive(l, c, lm, cm, pt)
    assert stamp > remote
    assert stamp > pack(l, c)
    assert hlc.now() > stamp


def test_update_carries_an_overflowing_remote_counter() -> None:
    hlc = HLC(ManualClock(BASE), last=pack(BASE, 1))
    stamp = hlc.update(pack(BASE, MAX_LOGICAL))
    assert stamp == pack(BASE + 1, 0)
    assert stamp > pack(BASE, MAX_LOGICAL)


@given(
    ahead=st.integers(min_value=1, max_value=10**6),
    max_offset=st.integers(min_value=0, max_value=10_000),
    cm=LOGICAL,
)
def test_update_refuses_a_remote_too_far_ahead_and_changes_nothing(
    ahead: int, max_offset: int, cm: int
) -> None:
    last = pack(BASE - 50, 3)
    hlc = HLC(ManualClock(BASE), max_offset_ms=max_offset, last=last)
    remote = pack(BASE + max_offset + ahead, cm)
    with pytest.raises(ClockSkewError) as info:
        hlc.update(remote)
    assert hlc.last == last
    assert info.value.remote_hlc == remote
    assert info.value.local_wall_ms == BASE
    assert info.value.max_offset_ms == max_offset
    with pytest.raises(ClockSkewError):
        hlc.check(remote)
    assert hlc.last == last


def test_update_accepts_a_remote_exactly_max_offset_ahead() -> None:
    hlc = HLC(ManualClock(BASE), max_offset_ms=500)
    assert unpack(hlc.update(pack(BASE + 500, MAX_LOGICAL - 1))) == (BASE + 500, MAX_LOGICAL)


@pytest.mark.parametrize("bad", [-1, 1 << 64, True, 1.5, "5", None])
def test_check_rejects_non_stamps(bad: object) -> None:
    hlc = HLC(ManualClock(BASE))
    with pytest.raises(ValueError, match="remote stamp"):
        hlc.check(bad)  # type: ignore[arg-type]
    assert hlc.last == 0


def test_observe_raises_last_without_a_skew_check() -> None:
    hlc = HLC(ManualClock(BASE), max_offset_ms=0)
    far = pack(BASE + 10**6, 1)
    hlc.observe(far)
    hlc.observe(5)
    assert hlc.last == far
    assert hlc.now() == far + 1


# --- packing and construction ------------------------------------------------------------


@given(wall=st.integers(min_value=0, max_value=MAX_WALL), logical=LOGICAL)
def test_pack_unpack_round_trip(wall: int, logical: int) -> None:
    stamp = pack(wall, logical)
    assert 0 <= stamp <= MAX_STAMP
    assert unpack(stamp) == (wall, logical)


@given(
    a=st.tuples(st.integers(0, MAX_WALL), LOGICAL), b=st.tuples(st.integers(0, MAX_WALL), LOGICAL)
)
def test_packed_order_is_lexicographic(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (pack(*a) < pack(*b)) == (a < b)


@pytest.mark.parametrize(
    ("wall", "logical", "field"),
    [
        (-1, 0, "wall"),
        (MAX_WALL + 1, 0, "wall"),
        (0, -1, "logical"),
        (0, MAX_LOGICAL + 1, "logical"),
    ],
)
def test_pack_range_errors(wall: int, logical: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        pack(wall, logical)


@pytest.mark.parametrize("reading", [-1, MAX_WALL + 1, 1.5, "now", None])
def test_wall_clock_readings_are_validated(reading: object) -> None:
    hlc = HLC(lambda: reading)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="wall clock"):
        hlc.now()
    assert hlc.last == 0


def test_constructor_range_errors() -> None:
    with pytest.raises(ValueError, match="max_offset_ms"):
        HLC(ManualClock(BASE), max_offset_ms=-1)
    with pytest.raises(ValueError, match="initial stamp"):
        HLC(ManualClock(BASE), last=-1)
    with pytest.raises(ValueError, match="initial stamp"):
        HLC(ManualClock(BASE), last=MAX_STAMP + 1)
