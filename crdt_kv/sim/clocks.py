"""Virtual time and per-node wall clocks for the simulator.

The simulator keeps one integer virtual time in microseconds (:class:`VirtualTime`). Each
node gets a :class:`SimClock`: the callable a store takes as ``clock=``, returning wall
milliseconds derived from virtual time with the node's own offset, drift, jumps and
freezes. Nothing here reads real time, so a run is a pure function of its seed.
"""

from __future__ import annotations

__all__ = ["BASE_WALL_MS", "SimClock", "VirtualTime"]

BASE_WALL_MS = 1_700_000_000_000
"""Wall time (Unix ms) every clock shows at virtual time 0 before its own offset."""


class VirtualTime:
    """The simulation's shared virtual time: ``now`` in integer microseconds."""

    __slots__ = ("now",)

    def __init__(self, now: int = 0) -> None:
        self.now = now

    @property
    def ms(self) -> float:
        """Virtual time in milliseconds."""
        return self.now / 1000


class SimClock:
    """A node's wall clock: ``BASE_WALL_MS + offset + t * (1 + drift)``, in integer ms.

    ``offset_ms`` models a clock set wrong; ``drift_ppm`` one that runs fast or slow (parts
    per million, so the error grows with virtual time); :meth:`jump` steps it (backwards
    too, like an NTP step or a bad RTC after a reboot); :meth:`freeze` holds one reading
    until :meth:`unfreeze` (a stalled clock, or every node frozen at one value to make HLC
    ties frequent). Calling it is the hot path of every stamp: keep it cheap.
    """

    __slots__ = ("_frozen", "_vt", "drift_ppm", "offset_ms")

    def __init__(self, vt: VirtualTime, *, offset_ms: int = 0, drift_ppm: int = 0) -> None:
        if drift_ppm <= -1_000_000:
            raise ValueError(f"drift_ppm {drift_ppm} would make the clock run backwards")
        self._vt = vt
        self.offset_ms = int(offset_ms)
        self.drift_ppm = int(drift_ppm)
        self._frozen: int | None = None

    def __call__(self) -> int:
        frozen = self._frozen
        if frozen is not None:
            return frozen
        t_ms = self._vt.now // 1000
        return BASE_WALL_MS + self.offset_ms + t_ms + t_ms * self.drift_ppm // 1_000_000

    @property
    def frozen(self) -> bool:
        """True while the clock is held at one reading."""
        return self._frozen is not None

    def skew_ms(self) -> int:
        """How far this clock is from true virtual time right now (ms, + is ahead)."""
        return self() - BASE_WALL_MS - self._vt.now // 1000

    def jump(self, delta_ms: int) -> None:
        """Step the clock by ``delta_ms`` (negative: backwards)."""
        self.offset_ms += int(delta_ms)

    def freeze(self, at_ms: int | None = None) -> None:
        """Hold the clock at ``at_ms`` (default: its current reading)."""
        self._frozen = self() if at_ms is None else int(at_ms)

    def unfreeze(self) -> None:
        """Resume running from the normal formula (the reading jumps to true time)."""
        self._frozen = None
