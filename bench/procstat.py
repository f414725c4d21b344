"""What ``/proc`` says about a process, for the benches that watch a child (Linux only)."""

from __future__ import annotations

import math
import os
import signal
import subprocess

__all__ = ["cpu_seconds", "proc_status", "stop_process"]


def proc_status(pid: int | str, field_name: str) -> int:
    """A ``/proc/<pid>/status`` size field (``VmRSS``, ``VmHWM``) in bytes; 0 once the
    process is gone. ``pid`` may be ``"self"``."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` used so far (all threads); NaN once it
    is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[str] | None, grace_s: float = 10.0) -> None:
    """SIGTERM (a node stops cleanly), then SIGKILL if it has not exited within
    ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
