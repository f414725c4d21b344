"""Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).

A stamp packs 48 bits of wall-clock milliseconds and a 16-bit logical counter into one
unsigned 64-bit integer, so stamps compare as plain ints. The clock never issues a stamp at
or below one it issued or observed before; the store persists its high-water mark so this
holds across restarts and wall-clock steps backwards. Remote stamps more than
``max_offset_ms`` ahead of our wall clock are refused (:class:`ClockSkewError`) without
changing the clock, unless the node was judged behind most of its peers
(:mod:`crdt_kv.skew`): then it accepts stamps up to its measured lag further ahead and
refuses local writes instead (the *fence*) until its wall clock is back in bound. The wall
clock is injected: this module reads no global time.
"""

from __future__ import annotations

from collections.abc import Callable

from crdt_kv.errors import ClockSkewError

__all__ = ["HLC", "LOGICAL_BITS", "MAX_LOGICAL", "MAX_WALL", "pack", "unpack"]

LOGICAL_BITS = 16
MAX_LOGICAL = (1 << LOGICAL_BITS) - 1
MAX_WALL = (1 << 48) - 1
MAX_STAMP = (1 << 64) - 1


def pack(wall_ms: int, logical: int) -> int:
    """Pack wall milliseconds and a logical counter into one stamp."""
    if not 0 <= wall_ms <= MAX_WALL:
        raise ValueError(f"wall time {wall_ms} ms is outside 0..2**48-1")
    if not 0 <= logical <= MAX_LOGICAL:
        raise ValueError(f"logical counter {logical} is outside 0..{MAX_LOGICAL}")
    return (wall_ms << LOGICAL_BITS) | logical


def unpack(stamp: int) -> tuple[int, int]:
    """Split a stamp into ``(wall_ms, logical)``."""
    return stamp >> LOGICAL_BITS, stamp & MAX_LOGICAL


class HLC:
    """A hybrid logical clock over an injected wall clock.

    ``clock`` returns wall time in integer milliseconds. ``last`` seeds the clock with the
    highest stamp issued or observed before (e.g. the value persisted by the store), so a
    restarted clock continues above it even when the wall clock went backwards.

    Counter overflow (more than 65,536 stamps in one millisecond, or a wall clock stuck
    behind ``last``) carries into the wall component instead of wrapping; the skew guard
    bounds how far that can run ahead.
    """

    __slots__ = ("_clock", "_last", "fence", "lag_ms", "max_offset_ms")

    def __init__(
        self, clock: Callable[[], int], *, max_offset_ms: int = 500, last: int = 0
    ) -> None:
        if max_offset_ms < 0:
            raise ValueError("max_offset_ms must be >= 0")
        if not 0 <= last <= MAX_STAMP:
            raise ValueError(f"initial stamp {last} is not an unsigned 64-bit integer")
        self._clock = clock
        self._last = last
        self.max_offset_ms = max_offset_ms
        self.lag_ms = 0
        """How far this clock was measured behind most of its peers (0: not behind).
        Remote stamps up to ``max_offset_ms + lag_ms`` ahead of the wall clock pass."""
        self.fence: tuple[str, int] | None = None
        """``("behind" | "ahead", measured ms)`` while local writes are refused because
        this clock is out of bound with most of its peers (:meth:`check_write`)."""

    @property
    def last(self) -> int:
        """The highest stamp issued or observed so far."""
        return self._last

    def wall(self) -> int:
        """Read the injected wall clock (milliseconds), checked to fit 48 bits."""
        pt = self._clock()
        if not isinstance(pt, int) or not 0 <= pt <= MAX_WALL:
            raise ValueError(f"wall clock returned {pt!r}; expected int milliseconds in 48 bits")
        return pt

    def now(self) -> int:
        """Issue a stamp for a local or send event: strictly above every earlier one."""
        pt = self.wall()
        l_old = self._last >> LOGICAL_BITS
        # Same or older wall: counter + 1; an overflowing counter carries into the wall.
        stamp = pt << LOGICAL_BITS if pt > l_old else self._last + 1
        if stamp > MAX_STAMP:
            raise OverflowError("hybrid logical clock exhausted 64 bits")
        self._last = stamp
        return stamp

    def check(self, remote: int) -> None:
        """Raise :class:`ClockSkewError` if ``remote`` is too far ahead; change nothing."""
        if not isinstance(remote, int) or isinstance(remote, bool) or not 0 <= remote <= MAX_STAMP:
            raise ValueError(f"remote stamp {remote!r} is not an unsigned 64-bit integer")
        pt = self.wall()
        remote_wall = remote >> LOGICAL_BITS
        if remote_wall > pt + self.max_offset_ms + self.lag_ms:
            raise ClockSkewError(
                f"remote stamp is {remote_wall - pt} ms ahead of the local wall clock "
                f"(max_offset_ms={self.max_offset_ms}"
                + (f", measured lag {self.lag_ms} ms)" if self.lag_ms else ")"),
                remote_hlc=remote,
                local_wall_ms=pt,
                max_offset_ms=self.max_offset_ms,
            )

    def update(self, remote: int) -> int:
        """Merge a received stamp (the paper's receive rule) and return the new stamp.

        Raises :class:`ClockSkewError` and leaves the clock unchanged when ``remote`` is
        more than ``max_offset_ms`` ahead of the local wall clock.
        """
        self.check(remote)
        pt = self.wall()
        l_old, c_old = unpack(self._last)
        l_m, c_m = unpack(remote)
        wall = max(l_old, l_m, pt)
        if wall == l_old and wall == l_m:
            logical = max(c_old, c_m) + 1
        elif wall == l_old:
            logical = c_old + 1
        elif wall == l_m:
            logical = c_m + 1
        else:
            logical = 0
        if logical > MAX_LOGICAL:
            wall, logical = wall + 1, 0
        stamp = (wall << LOGICAL_BITS) | logical
        if stamp > MAX_STAMP:
            raise OverflowError("hybrid logical clock exhausted 64 bits")
        self._last = stamp
        return stamp

    def check_write(self) -> None:
        """Raise :class:`ClockSkewError` if local writes are fenced (see :attr:`fence`).

        A node behind most of its peers stays fenced until its wall clock is back within
        ``max_offset_ms`` of the newest stamp it has seen (its peers' time); then the fence
        and the lag lift here. A node ahead of most of its peers is fenced until the
        judge (:class:`crdt_kv.skew.ClockJudge`) measures it in bound again: its stamps
        would be refused everywhere, so a write it acknowledged could not leave it.
        """
        fence = self.fence
        if fence is None:
            return
        pt = self.wall()
        side, ms = fence
        if side == "behind" and (self._last >> LOGICAL_BITS) - pt <= self.max_offset_ms:
            self.fence, self.lag_ms = None, 0
            return
        raise ClockSkewError(
            f"local write refused: this node's clock is {ms} ms {side} of most of its peers "
            f"(max_offset_ms={self.max_offset_ms}); writes resume once it is back in bound",
            remote_hlc=self._last,
            local_wall_ms=pt,
            max_offset_ms=self.max_offset_ms,
        )

    def observe(self, stamp: int) -> None:
        """Raise ``last`` to at least ``stamp`` without a skew check (trusted, e.g. persisted)."""
        self._last = max(self._last, stamp)
