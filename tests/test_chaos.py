"""Multi-process chaos (crdt_kv/testing/chaos/run.py): real ``crdt-kv serve`` processes
behind the fault-injecting proxy, SIGKILLed and restarted while writers log every
acknowledged write; the independent checker must find them converged with nothing lost or
resurrected.

A short run is part of every test run; the full one (5 nodes, 100+ kills) is marked
``soak``: ``make chaos`` (``CHAOS_SECONDS``, default 300, and ``CHAOS_SEED``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crdt_kv.testing.chaos import ChaosConfig, ChaosError, ChaosReport, run_chaos
from crdt_kv.testing.chaos.__main__ import main
from crdt_kv.testing.chaos.run import DEFAULT_NODE_OPTIONS


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def show(report: ChaosReport) -> None:
    print("\n".join(report.lines()))


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")


@needs_proc
async def test_a_short_chaos_run_converges_and_loses_nothing(tmp_path: Path) -> None:
    config = ChaosConfig(
        nodes=3,
        seconds=15,
        seed=7,
        writers=3,
        keys=24,
        kill_interval_s=2.0,
        fault_interval_s=0.6,
        max_down=1,
        converge_timeout_s=90,
    )
    report = await run_chaos(config, tmp_path, say=print)
    show(report)
    assert report.ok, report.lines()
    assert report.kills >= 1 and report.restarts == report.kills
    assert sum(report.faults.values()) >= 1 and report.operations["ok"] > 0
    assert report.verdict is not None and report.verdict.stores == 3
    assert set(report.stop_codes.values()) == {0}
    assert not processes_under(tmp_path)


@needs_proc
async def test_a_node_that_cannot_start_fails_the_run_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    config = ChaosConfig(nodes=2, seconds=1, node_options={"bogus_option": 1})
    with pytest.raises(ChaosError, match=r"node n1 exited .*node\.bogus_option"):
        await run_chaos(config, tmp_path, say=print)
    assert not processes_under(tmp_path)


@needs_proc
async def test_a_cluster_that_does_not_replicate_fails_the_verdict(tmp_path: Path) -> None:
    """The whole pipeline can fail: nodes that only pull never send their writes, so the
    stores differ, and the verdict says so."""
    config = ChaosConfig(
        nodes=2,
        seconds=3,
        writers=2,
        keys=8,
        kill_interval_s=0,
        fault_interval_s=0,
        converge_timeout_s=2,
        node_options={**DEFAULT_NODE_OPTIONS, "mode": "pull", "catch_up": False},
    )
    report = await run_chaos(config, tmp_path, say=print)
    show(report)
    assert not report.ok and report.convergence_s is None
    assert report.verdict is not None and report.verdict.problems["diverged"] > 0
    assert report.kills == 0 and not report.faults
    assert report.lines()[-1] == "RESULT: FAIL"
    assert not processes_under(tmp_path)


def test_the_command_line_checks_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--nodes", "3", "--max-down", "3"])
    assert "--max-down below --nodes" in capsys.readouterr().err


@pytest.mark.soak
@needs_proc
async def test_full_chaos_run(tmp_path: Path) -> None:
    """``make chaos``: five nodes, a SIGKILL every 2 s on average for ``CHAOS_SECONDS``."""
    seconds = float(os.environ.get("CHAOS_SECONDS", "300"))
    config = ChaosConfig(seconds=seconds, seed=int(os.environ.get("CHAOS_SEED", "1")))
    report = await run_chaos(config, tmp_path, say=print)
    show(report)
    assert report.ok, report.lines()
    if seconds >= 300:
        assert report.kills >= 100
    assert not processes_under(tmp_path)
