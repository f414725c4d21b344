"""Run the fuzz targets of ``crdt_kv.testing.fuzz_targets`` (see fuzz/README.md).

    python fuzz/run.py [--seconds N | --runs N] [TARGET ...]   coverage-guided (atheris),
                                                               one target at a time
    python fuzz/run.py --merge TARGET ...    add to fuzz/corpus what the runs found that
                                             reaches new coverage (libFuzzer -merge)
    python fuzz/run.py --smoke [--runs N] [TARGET ...]   corpus + seeded mutants, no atheris
    python fuzz/run.py --replay TARGET FILE ...          run saved inputs (a crash file)

Each atheris run reads fuzz/corpus/TARGET (the committed seeds) and keeps what it finds in
fuzz/.work/TARGET; a crash (an exception, a run over 1 s, RSS over 1 GiB) writes its input
to fuzz/crashes/ and fails the run. Exits non-zero if any target failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
WORK = HERE / ".work"
CRASHES = HERE / "crashes"
TIMEOUT_S = 1
RSS_LIMIT_MB = 1024
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_COV = re.compile(r"cov: (\d+) ft: (\d+)")


def _child(name: str, args: list[str]) -> None:
    """Inside the fuzzing process: instrument crdt_kv, hand the target to atheris."""
    import atheris

    with atheris.instrument_imports(include=["crdt_kv"]):
        import crdt_kv.net.discovery  # noqa: F401 - imported here to be instrumented
        from crdt_kv.testing.fuzz_targets import TARGETS

    atheris.Setup([sys.argv[0], *args], TARGETS[name].run)
    atheris.Fuzz()


def _libfuzzer_args(name: str, max_len: int, budget: list[str]) -> list[str]:
    CRASHES.mkdir(exist_ok=True)
    (WORK / name).mkdir(parents=True, exist_ok=True)
    return [
        *budget,
        f"-timeout={TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={max_len}",
        f"-artifact_prefix={CRASHES}/{name}-",
        "-print_final_stats=1",
        str(WORK / name),
        str(CORPUS / name),
    ]


def _fuzz(name: str, max_len: int, budget: list[str]) -> dict[str, str]:
    """One atheris run of ``name`` in a child process; its figures (and ``result``)."""
    log = WORK / f"{name}.log"
    cmd = [sys.executable, __file__, "--child", name, *_libfuzzer_args(name, max_len, budget)]
    started = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    text = log.read_text(errors="replace")
    stats = dict(_STAT.findall(text))
    cov = _COV.findall(text)
    return {
        "target": name,
        "execs": stats.get("number_of_executed_units", "?"),
        "seconds": f"{time.monotonic() - started:.0f}",
        "exec/s": stats.get("average_exec_per_sec", "?"),
        "cov": cov[-1][0] if cov else "?",
        "ft": cov[-1][1] if cov else "?",
        "rss_mb": stats.get("peak_rss_mb", "?"),
        "result": "ok" if rc == 0 else f"FAILED (rc {rc}, see {log})",
    }


def _merge(name: str, max_len: int) -> None:
    """Add to fuzz/corpus/NAME the inputs of fuzz/.work/NAME that reach coverage it does not
    (libFuzzer ``-merge=1``, which keeps the committed seeds as they are)."""
    args = ["-merge=1", f"-max_len={max_len}", str(CORPUS / name), str(WORK / name)]
    subprocess.run([sys.executable, __file__, "--child", name, *args], check=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return 0
    from crdt_kv.testing.fuzz_targets import TARGETS, corpus_files, smoke

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    p.add_argument("--seconds", type=int, default=300, help="per target (default 300)")
    p.add_argument("--runs", type=int, help="executions per target instead of a time")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--merge", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    mode.add_argument("--replay", action="store_true")
    a = p.parse_args(argv)
    if a.replay:
        target = TARGETS[a.targets[0]]
        for f in a.targets[1:]:
            target.run(Path(f).read_bytes())
            print(f"{f}: ok")
        return 0
    names = a.targets or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        p.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    failed = False
    for name in names:
        t = TARGETS[name]
        if a.merge:
            _merge(name, t.max_len)
        elif a.smoke:
            seeds = [f.read_bytes() for f in corpus_files(CORPUS / name)]
            n = smoke(t, seeds, runs=a.runs or 2000)
            print(f"{name}: {n} inputs, no finding")
        else:
            budget = [f"-runs={a.runs}"] if a.runs else [f"-max_total_time={a.seconds}"]
            row = _fuzz(name, t.max_len, budget)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            failed = failed or row["result"] != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
