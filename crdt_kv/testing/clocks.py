"""A hand-moved wall clock for tests of code built on crdt_kv.

Why it exists: a store stamps every write with an HLC built on the wall clock it is given
(``crdt_kv.open(..., clock=clock)``). With the real clock a test cannot know which of two
writes carries the larger stamp, nor step time back or forward; with this one it can, and
it is the one clock every crdt_kv test uses. No dependencies: importing it is free.
"""

from __future__ import annotations

__all__ = ["DEFAULT_START_MS", "ManualClock"]

DEFAULT_START_MS = 1_700_000_000_000
"""Where a :class:`ManualClock` starts by default: a plausible Unix time in ms (Nov 2023)."""


class ManualClock:
    """A wall clock in integer Unix milliseconds that only the test moves.

    Call it for the reading (it is the ``clock=`` callable a store takes); :meth:`advance`
    moves it by a delta (negative: the wall clock steps back, like an NTP step);
    :meth:`set` puts it at an absolute reading; :attr:`now` is the reading as a plain
    attribute, so ``clock.now = t`` works too. :attr:`now_s` is the same instant in float
    seconds, for sans-I/O objects that take ``now`` in seconds.

    ``tick_ms`` turns on auto-tick: every call returns the reading and then moves the clock
    ``tick_ms`` forward, so successive writes through a shared clock get distinct,
    increasing wall times without the test advancing it by hand (reading :attr:`now` or
    :attr:`now_s` does not tick). With the default ``0`` the clock stands still until
    moved. One clock may be shared by several stores: they then agree on the time.
    """

    __slots__ = ("now", "tick_ms")

    def __init__(self, now: int = DEFAULT_START_MS, *, tick_ms: int = 0) -> None:
        _check_int("now", now)
        _check_int("tick_ms", tick_ms)
        if tick_ms < 0:
            raise ValueError(f"tick_ms must be >= 0, got {tick_ms}")
        self.now = now
        self.tick_ms = tick_ms

    def __call__(self) -> int:
        """The reading in ms; with auto-tick, the clock then moves ``tick_ms`` on."""
        reading = self.now
        self.now = reading + self.tick_ms
        return reading

    def advance(self, ms: int = 1) -> int:
        """Move the clock by ``ms`` (may be negative); returns the new reading."""
        _check_int("ms", ms)
        self.now += ms
        return self.now

    def set(self, ms: int) -> None:
        """Put the clock at ``ms`` (Unix milliseconds), forward or back."""
        _check_int("ms", ms)
        self.now = ms

    @property
    def now_s(self) -> float:
        """The current reading in seconds (``now / 1000``), without ticking."""
        return self.now / 1000

    def __repr__(self) -> str:
        tick = f", tick_ms={self.tick_ms}" if self.tick_ms else ""
        return f"ManualClock({self.now}{tick})"


def _check_int(name: str, value: object) -> None:
    # A float would leak into HLC stamps, which must be integers; bool is an int by
    # accident of history and is always a mistake here.
    if type(value) is not int:
        raise TypeError(f"{name} must be an int (milliseconds), not {type(value).__name__}")
