"""Per-source penalties for misbehaving inbound connections (crdt_kv/net/penalty.py)."""

from __future__ import annotations

import pytest

from crdt_kv.net.penalty import Penalties


def test_blocks_after_grace_doubling_to_the_cap() -> None:
    p = Penalties(base_s=0.1, max_s=1.0, grace=2)
    blocks = [p.offend("10.0.0.1", "protocol", 0.0) for _ in range(8)]
    assert blocks == [0.0, 0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert p.offences == {"protocol": 8}
    assert not p.check("10.0.0.1", 0.5)
    assert p.check("10.0.0.1", 1.0)
    assert p.check("10.0.0.2", 0.5)  # another host is not affected
    assert p.blocked == 1


def test_quiet_time_decays_and_a_good_session_forgives() -> None:
    p = Penalties(base_s=0.1, max_s=10.0, grace=0)
    for _ in range(4):
        p.offend("h", "rejected", 0.0)
    assert p.blocked_for("h", 0.0) == pytest.approx(0.8)
    # 25 s of quiet lower the level by two: the next offence is the third, not the fifth.
    assert p.offend("h", "rejected", 25.0) == pytest.approx(0.4)
    p.forgive("h")
    assert p.blocked_for("h", 25.0) == 0.0
    assert p.offend("h", "rejected", 25.0) == pytest.approx(0.1)


def test_table_is_bounded_least_recent_offender_dropped() -> None:
    p = Penalties(grace=0, max_sources=3)
    for i in range(5):
        p.offend(f"h{i}", "protocol", float(i))
    assert len(p) == 3
    assert p.blocked_for("h0", 4.0) == 0.0 and p.blocked_for("h4", 4.0) > 0


def test_disabled_or_unknown_source_never_blocks() -> None:
    off = Penalties(max_s=0.0, grace=0)
    assert off.offend("h", "protocol", 0.0) == 0.0 and off.check("h", 0.0)
    assert off.offences == {"protocol": 1}
    on = Penalties(grace=0)
    assert on.offend(None, "protocol", 0.0) == 0.0 and on.check(None, 0.0)
    with pytest.raises(ValueError, match="max_sources"):
        Penalties(max_sources=0)
