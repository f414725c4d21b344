"""The catch-up tracker with fake link events and times (crdt_kv/protocol/catchup.py)."""

from __future__ import annotations

import math

import pytest

from crdt_kv import ConfigError
from crdt_kv.protocol import (
    CatchUpPeer,
    CatchUpReport,
    CatchUpTracker,
    CaughtUp,
    Connected,
    LinkFailed,
    SessionEnded,
    SessionStats,
)
from crdt_kv.protocol.catchup import MAX_REASON_CHARS, failure_reason

A, B, C = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"


def ended(peer: str | None, *, caught_up: bool, error: BaseException | None) -> SessionEnded:
    return SessionEnded(peer, False, caught_up, error, True, SessionStats())


def test_no_peers_is_done_at_once() -> None:
    t = CatchUpTracker(now=100.0, timeout_s=30)
    assert t.done and t.get_timer() is None
    report = t.report(100.0)
    assert report.complete and report.peers == 0
    assert str(report) == "catch-up: no peers to catch up from"


def test_waits_for_every_peer_until_each_caught_up_or_failed() -> None:
    t = CatchUpTracker(now=0.0, timeout_s=30)
    t.add(A, 0.0)
    t.add(B, 0.0)
    t.add(A, 0.1)  # known already: no second entry
    assert not t.done and t.get_timer() == 30.0
    assert t.pending == [A, B]
    t.link_event(A, Connected("pa", b"i", "default", 5, 0), 0.2)
    t.link_event(A, CaughtUp("pa", live=True), 0.3)
    assert not t.done and t.pending == [B]
    t.link_event(B, LinkFailed(ConnectionRefusedError("refused"), 1, dialing=True), 0.4)
    assert t.done and t.get_timer() is None
    report = t.report(0.5)
    assert report.caught_up == (CatchUpPeer(A, "pa"),)
    assert report.failed == (CatchUpPeer(B, None, "connect failed: refused"),)
    assert report.pending == ()
    assert report.elapsed_s == 0.5 and not report.complete


def test_first_outcome_is_final() -> None:
    """A failed peer that later catches up (its link retries) stays failed in the report,
    and a peer caught up from stays so when its session breaks later."""
    t = CatchUpTracker(now=0.0, timeout_s=30)
    t.add(A, 0.0)
    t.add(B, 0.0)
    t.link_event(A, LinkFailed(OSError("boom"), 1, dialing=False), 1.0)
    t.link_event(A, CaughtUp("pa", live=False), 2.0)
    t.link_event(B, CaughtUp("pb", live=True), 2.0)
    t.link_event(B, LinkFailed(OSError("later"), 1, dialing=False), 3.0)
    report = t.report(3.0)
    assert [p.address for p in report.failed] == [A]
    assert report.failed[0].reason == "boom"
    assert report.caught_up == (CatchUpPeer(B, "pb"),)


def test_deadline_leaves_the_rest_pending() -> None:
    t = CatchUpTracker(now=10.0, timeout_s=5)
    t.add(A, 10.0)
    t.add(B, 11.0)
    t.link_event(A, CaughtUp("pa", live=True), 12.0)
    t.handle_timer(14.9)
    assert not t.done
    t.handle_timer(15.0)
    assert t.done and t.get_timer() is None
    t.add(C, 15.5)  # too late to be waited for
    t.link_event(B, CaughtUp("pb", live=True), 16.0)  # too late to count
    report = t.report(15.0)
    assert report.pending == (CatchUpPeer(B),)
    assert [p.address for p in report.caught_up] == [A]
    assert report.elapsed_s == 5.0 and report.timeout_s == 5
    assert "pending    10.0.0.2:7000  no answer within 5 s" in str(report)


def test_a_peer_added_while_waiting_is_waited_for() -> None:
    t = CatchUpTracker(now=0.0, timeout_s=30)
    t.add(A, 0.0)
    t.link_event(A, CaughtUp("pa", live=True), 1.0)
    assert t.done
    t.add(B, 1.5)  # discovered before the driver noticed the wait was over
    assert not t.done
    t.link_event(B, CaughtUp("pb", live=True), 2.0)
    assert t.done and t.report(2.0).complete


def test_removed_peer_leaves_the_report() -> None:
    t = CatchUpTracker(now=0.0, timeout_s=30)
    t.add(A, 0.0)
    t.add(B, 0.0)
    t.link_event(A, CaughtUp("pa", live=True), 1.0)
    t.remove(B)
    t.remove(A)  # settled peers stay
    assert t.done
    assert t.report(1.0).peers == 1


def test_events_of_unknown_addresses_are_ignored() -> None:
    t = CatchUpTracker(now=0.0, timeout_s=30)
    t.add(A, 0.0)
    t.link_event(B, CaughtUp("pb", live=True), 1.0)
    assert t.pending == [A]


def test_session_ended_settles_a_peer_without_caught_up_or_failure() -> None:
    t = CatchUpTracker(now=0.0, timeout_s=30)
    for address in (A, B, C):
        t.add(address, 0.0)
    t.link_event(A, ended("pa", caught_up=True, error=None), 1.0)
    t.link_event(B, ended("pb", caught_up=False, error=None), 1.0)
    t.link_event(C, ended(None, caught_up=False, error=ValueError("bad")), 1.0)
    report = t.report(1.0)
    assert report.caught_up == (CatchUpPeer(A, "pa"),)
    assert report.failed == (
        CatchUpPeer(B, "pb", "session ended before catching up"),
        CatchUpPeer(C, None, "bad"),
    )


def test_failure_keeps_the_peer_id_its_hello_gave() -> None:
    t = CatchUpTracker(now=0.0, timeout_s=30)
    t.add(A, 0.0)
    t.link_event(A, Connected("pa", b"i", "default", 5, 0), 0.1)
    t.link_event(A, LinkFailed(OSError("x"), 1, dialing=False), 0.2, reason="skewed")
    assert t.report(0.2).failed == (CatchUpPeer(A, "pa", "skewed"),)


def test_report_string_lists_every_peer() -> None:
    report = CatchUpReport(
        caught_up=(CatchUpPeer(A, "pa"),),
        failed=(CatchUpPeer(B, None, "connect failed: refused"),),
        pending=(CatchUpPeer(C),),
        elapsed_s=2.04,
        timeout_s=2.0,
    )
    assert str(report).splitlines() == [
        "catch-up incomplete: caught up from 1 of 3 peers in 2.04 s",
        "  caught up  10.0.0.1:7000  peer pa",
        "  failed     10.0.0.2:7000  connect failed: refused",
        "  pending    10.0.0.3:7000  no answer within 2 s",
    ]
    done = CatchUpReport((CatchUpPeer(A, "pa"),), (), (), 0.21, 30.0)
    assert done.complete
    assert str(done).splitlines()[0] == "catch-up complete: caught up from 1 of 1 peers in 0.21 s"


def test_failure_reason_is_short_and_one_line() -> None:
    group_cause = OSError("all attempts to connect to x failed")
    group_cause.__cause__ = ExceptionGroup("g", [OSError("refused one"), OSError("refused two")])
    assert failure_reason(group_cause, dialing=True) == "connect failed: refused one; refused two"
    assert failure_reason(TimeoutError()) == "TimeoutError"
    long = failure_reason(ValueError("x\n" * 1000))
    assert len(long) == MAX_REASON_CHARS and long.endswith("...") and "\n" not in long


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_timeout_is_a_config_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="catch_up_timeout_s"):
        CatchUpTracker(now=0.0, timeout_s=bad)


def test_listening_time_waits_for_discovered_peers() -> None:
    """With discovery the wait lasts at least the listening time: a peer heard meanwhile
    is waited for; with nobody heard it ends then, not at the timeout."""
    t = CatchUpTracker(now=0.0, timeout_s=30, listen_s=4)
    assert not t.done and t.get_timer() == 4
    t.add(A, 1.0)
    t.link_event(A, CaughtUp("a", live=False), 2.0)
    assert not t.done  # caught up from A, still listening
    t.handle_timer(4.0)
    assert t.done and t.report(4.0).caught_up == (CatchUpPeer(A, "a"),)
    quiet = CatchUpTracker(now=0.0, timeout_s=2, listen_s=4)  # capped by the timeout
    assert quiet.get_timer() == 2
    quiet.handle_timer(2.0)
    assert quiet.done and quiet.report(2.0).complete
    with pytest.raises(ConfigError):
        CatchUpTracker(now=0.0, listen_s=-1)
