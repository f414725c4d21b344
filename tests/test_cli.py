"""The ``crdt-kv`` command (crdt_kv/cli.py): through ``main(argv)`` and as the installed
console script in a real subprocess. Errors exit non-zero with one clear line on stderr
and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import crdt_kv
from crdt_kv import accel
from crdt_kv.cli import build_parser, main
from crdt_kv.testing import ManualClock

SCRIPT = str(Path(sys.executable).with_name("crdt-kv"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_put_get_del(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "db")
    code, out, _ = run(capsys, "put", "user:1", "Ada", "--path", db)
    assert code == 0 and out.startswith("ok hlc=")
    assert run(capsys, "get", "user:1", "--path", db)[:2] == (0, '"Ada"\n')
    code, out, _ = run(
        capsys, "put", "user:2", '{"name": "Bob", "n": [1, 2]}', "--json", "--path", db
    )
    assert code == 0
    code, out, err = run(capsys, "get", "user:2", "-v", "--path", db)
    assert json.loads(out) == {"name": "Bob", "n": [1, 2]}
    assert "hlc=" in err and "seq=2" in err
    code, out, _ = run(capsys, "del", "user:1", "--path", db)
    assert code == 0 and out.startswith("ok hlc=")
    code, out, err = run(capsys, "get", "user:1", "--path", db)
    assert (code, out) == (1, "") and "user:1: not found" in err
    with crdt_kv.open(db) as store:  # the CLI wrote a real store
        assert store.get("user:2") == {"name": "Bob", "n": [1, 2]}
        assert store.entry("user:1").deleted  # type: ignore[union-attr]


def test_scan_bounds_limit_and_reverse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "db")
    with crdt_kv.open(db) as store:
        for i in range(10):
            store.put(f"k{i}", i)
        store.put("other", "x")
        store.delete("k5")
    code, out, _ = run(capsys, "scan", "--path", db, "--gte", "k2", "--lt", "k8")
    assert code == 0
    assert out.splitlines() == ["k2\t2", "k3\t3", "k4\t4", "k6\t6", "k7\t7"]
    code, out, _ = run(capsys, "scan", "--path", db, "--reverse", "--limit", "3")
    assert out.splitlines() == ['other\t"x"', "k9\t9", "k8\t8"]
    assert run(capsys, "scan", "--path", db, "--limit", "0")[:2] == (0, "")


def test_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "db")
    with crdt_kv.open(db, peer_id="node-a") as store:
        store.put("a", 1)
        store.put("b", 2)
        digest, inc = store.digest().hex(), store.incarnation.hex()
    code, out, _ = run(capsys, "info", "--path", db)
    fields = dict(
        line.split(None, 1)
        for line in out.replace("live keys", "live_keys")
        .replace("last seq", "last_seq")
        .splitlines()
    )
    assert code == 0
    assert fields == {
        "peer_id": "node-a",
        "incarnation": inc,
        "backend": "rocksdb",
        "conflicts": "lww",
        "live_keys": "2",
        "last_seq": "2",
        "digest": digest,
    }


# --- siblings mode -------------------------------------------------------------------------


SHOWN = {  # how the CLI prints each sibling seed_siblings writes, by key and peer
    "cart": {"a": '["milk"]', "b": '["eggs"]'},
    "cask": {"a": '"oak"', "b": "b'\\x00raw'", "c": '{"n": 3}'},
}


def seed_siblings(path: Path) -> None:
    """A siblings-mode store at ``path`` (peer a) after syncing with peers b and c: ``cart``
    and ``cask`` hold concurrent versions, ``solo`` one value, ``gone`` was deleted."""
    clock = ManualClock()  # one standing clock: concurrent writes get equal stamps
    a = crdt_kv.open(path, peer_id="a", clock=clock, conflicts="siblings")
    b = crdt_kv.open(backend="memory", peer_id="b", clock=clock, conflicts="siblings")
    c = crdt_kv.open(backend="memory", peer_id="c", clock=clock, conflicts="siblings")
    with a, b, c:
        a.put("cart", ["milk"])
        b.put("cart", ["eggs"])
        a.put("cask", "oak")
        b.put("cask", b"\x00raw")
        c.put("cask", {"n": 3})
        a.put("solo", "only")
        b.put("gone", 1)
        c.delete("gone")  # concurrent with b's put: the put survives...
        a.apply(b.changes())
        a.apply(c.changes())
        a.delete("gone")  # ...until a deletes what it holds
        assert [k for k, _ in a.conflicts()] == ["cart", "cask"]


def test_get_prints_every_sibling_in_sibling_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db"
    seed_siblings(db)
    with crdt_kv.open(db) as store:
        want = {k: store.get_all(k) for k in ("cart", "cask")}
    for key in ("cart", "cask"):
        code, out, err = run(capsys, "get", key, "--path", str(db))
        assert (code, err) == (0, "")
        rows = [line.split("\t") for line in out.splitlines()]
        assert rows == [[SHOWN[key][e.peer], f"hlc={e.hlc} peer={e.peer}"] for e in want[key]]
    # Sibling order is the lww merge order, winner first: higher stamp, then higher peer.
    stamps = [(e.hlc, e.peer) for e in want["cask"]]
    assert stamps == sorted(stamps, reverse=True) and {p for _, p in stamps} == {"a", "b", "c"}
    # One live value prints exactly as in lww mode, so scripts keep working.
    assert run(capsys, "get", "solo", "--path", str(db))[:2] == (0, '"only"\n')
    code, out, err = run(capsys, "get", "cart", "-v", "--path", str(db))
    assert len(out.splitlines()) == 2 and err.startswith("siblings=2 seq=")
    code, _, err = run(capsys, "get", "gone", "--path", str(db))
    assert code == 1 and "gone: not found" in err


def test_get_help_says_what_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["get", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one line per live sibling, in sibling order" in text
    assert "VALUE<TAB>hlc=STAMP peer=PEER" in text


def test_plugin_placeholders_say_what_their_modules_register() -> None:
    full = build_parser().format_help()  # every plugin module imported
    for command in ("get", "simulate", "serve", "status", ""):
        assert build_parser([command]).format_help() == full, command


def test_top_level_help_imports_no_plugin() -> None:
    code = (
        "import sys\n"
        "from crdt_kv.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('trio', 'crdt_kv.sim.runner', 'crdt_kv.net.status')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "simulate" in out and "status" in out
    assert out.strip().splitlines()[-1] == "[]"


def test_plugin_command_runs_after_lazy_parse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "--conflicts" in capsys.readouterr().out


def test_conflicts_lists_keys_with_siblings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db"
    seed_siblings(db)
    with crdt_kv.open(db) as store:
        want = dict(store.conflicts())
    code, out, err = run(capsys, "conflicts", "--path", str(db))
    assert (code, err) == (0, "")
    expected = [
        f"{k}\t{SHOWN[k][e.peer]}\thlc={e.hlc} peer={e.peer}"
        for k, live in want.items()
        for e in live
    ]
    assert out.splitlines() == expected and len(expected) == 5
    code, out, _ = run(capsys, "conflicts", "--path", str(db), "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["key"] for d in docs] == ["cart", "cask"]
    assert docs[1]["siblings"] == [
        {
            "value": e.value if not isinstance(e.value, bytes) else repr(e.value),
            "hlc": e.hlc,
            "peer": e.peer,
        }
        for e in want["cask"]
    ]
    out = run(capsys, "conflicts", "--path", str(db), "--gte", "cas", "--lt", "cat")[1]
    assert {line.split("\t")[0] for line in out.splitlines()} == {"cask"}
    out = run(capsys, "conflicts", "--path", str(db), "--limit", "1", "--json")[1]
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["cart"]
    assert run(capsys, "conflicts", "--path", str(db), "--lt", "cart")[:3] == (0, "", "")


def test_conflicts_of_an_lww_store_lists_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "db")
    assert run(capsys, "put", "k", "v", "--path", db)[0] == 0
    code, out, err = run(capsys, "conflicts", "--path", db)
    assert (code, out) == (0, "") and "lww mode" in err


def test_info_and_creation_show_the_conflict_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag_db = str(tmp_path / "flag")
    assert run(capsys, "put", "k", "v", "--path", flag_db, "--conflicts", "siblings")[0] == 0
    assert "conflicts   siblings\n" in run(capsys, "info", "--path", flag_db)[1]
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\npath = "cfg"\nconflicts = "siblings"\n')
    assert run(capsys, "del", "k", "--config", str(cfg))[0] == 0  # creates the store
    with crdt_kv.open(tmp_path / "cfg") as store:
        assert store.conflict_mode == "siblings"
    assert "conflicts   siblings\n" in run(capsys, "info", "--config", str(cfg))[1]
    # The mode is fixed at creation: asking for the other one is a one-line error.
    code, out, err = run(capsys, "get", "k", "--path", flag_db, "--conflicts", "lww")
    assert (code, out) == (2, "") and "conflicts='siblings'" in err and err.count("\n") == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\npath = "x"\nconflicts = "crdt"\n')
    code, _, err = run(capsys, "put", "k", "v", "--config", str(bad))
    assert code == 2 and "storage.conflicts must be one of lww, siblings" in err
    assert not (tmp_path / "x").exists()


def test_backend_and_config_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "s")
    assert run(capsys, "put", "k", "v", "--path", db, "--backend", "sqlite")[0] == 0
    assert (tmp_path / "s" / "crdt_kv.sqlite3").is_file()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\nbackend = "sqlite"\npath = "s"\n')
    assert run(capsys, "get", "k", "--config", str(cfg))[:2] == (0, '"v"\n')
    assert "backend     sqlite" in run(capsys, "info", "--config", str(cfg))[1]


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--keys", "60")
    assert code == 0
    assert out.splitlines()[-1] == "verdict: CONVERGED"
    counts = [line.split(":")[1].split()[0] for line in out.splitlines()[:2]]
    # 60 keys, 9 of them deleted by a concurrently with b's put: each delete wins or not
    # by the replicas' clocks, but both replicas agree.
    assert counts[0] == counts[1] and 51 <= int(counts[0]) <= 60


@pytest.mark.parametrize("command", ["get k", "scan", "info", "conflicts"])
def test_reading_commands_do_not_create_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = str(tmp_path / "typo")
    code, out, err = run(capsys, *command.split(), "--path", missing)
    assert code == 2 and out == ""
    assert err.startswith(f"error: StoreNotFoundError: no store at {missing!r}")
    assert not os.path.exists(missing)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "k", "v"], "needs a path"),
        (["put", "k", "v", "--path", "{tmp}/x", "--backend", "leveldb"], "available: memory"),
        (["put", "k", "v", "--config", "{tmp}/none.toml"], "does not exist"),
        (["put", "k", "{{", "--json", "--path", "{tmp}/x"], "value is not JSON"),
        (["put", "k", "v", "--path", "{tmp}/file/sub"], "Not a directory"),
    ],
)
def test_errors_exit_non_zero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("in the way")
    code, out, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 2 and out == ""
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_a_store_in_use_is_reported_not_crashed_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "sqlite")
    with crdt_kv.open(db, backend="sqlite"):
        code, _, err = run(capsys, "get", "k", "--path", db, "--backend", "sqlite")
        assert code == 2 and "ConfigError" in err and "held by another process" in err
        code, _, err = run(capsys, "put", "k", "v", "--path", db, "--backend", "sqlite")
        assert code == 2 and "another process is using it" in err
    db = str(tmp_path / "rocksdb")
    with crdt_kv.open(db) as held:
        held.put("k", "v")
        assert run(capsys, "get", "k", "--path", db) == (0, '"v"\n', "")  # read-only
        code, _, err = run(capsys, "put", "k", "w", "--path", db)
        assert code == 2 and "ConfigError" in err and "lock" in err.lower()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["get"],
        ["scan", "--path", "x", "--limit", "-1"],
        ["demo", "--keys", "x"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: crdt-kv" in err and "Traceback" not in err


# --- the installed console script ---------------------------------------------------------


def script(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


def test_the_console_script(tmp_path: Path) -> None:
    assert os.access(SCRIPT, os.X_OK), f"console script missing: {SCRIPT}"
    db = str(tmp_path / "db")
    put = script("put", "greeting", "hello", "--path", db)
    assert put.returncode == 0, put.stderr
    got = script("get", "greeting", "--path", db)
    assert (got.returncode, got.stdout, got.stderr) == (0, '"hello"\n', "")
    version = script("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"{crdt_kv.__version__} ({accel.DESCRIPTION})"
    bad = script("get", "greeting", "--path", db, "--backend", "nope")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: ConfigError: unknown storage backend 'nope'")
    assert "Traceback" not in bad.stderr


def test_the_console_script_survives_a_closed_pipe(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    with crdt_kv.open(db) as store, store.batch() as b:
        for i in range(4000):
            b.put(f"key{i:05d}", "v" * 60)  # far more than a pipe buffer holds
    proc = subprocess.Popen(
        [SCRIPT, "scan", "--path", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"key00000\t")
    proc.stdout.close()  # like `crdt-kv scan | head -1`
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err


def test_members_and_forget_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from crdt_kv.horizon import GossipRow

    db = str(tmp_path / "db")
    now = int(time.time() * 1000)  # the CLI opens the store on the system clock
    with crdt_kv.open(db, peer_id="me") as store:
        table = [GossipRow("a", 7 << 16, now, 5 << 16), GossipRow("b", 3, now, 2)]
        store.membership.heard("a", table)
        store.membership.pulled("a", 9 << 16, table)
    code, out, _ = run(capsys, "members", "--path", db, "--json")
    rows = {r["peer"]: r for r in map(json.loads, out.splitlines())}
    assert code == 0 and set(rows) == {"a", "b"}
    # a's own row claims only 7: a pull takes the smaller of it and the Hello's stamp.
    assert rows["a"]["received_through"] == 7 << 16 and rows["a"]["reported_d"] == 5 << 16
    assert rows["b"]["received_through"] == 3 and rows["a"]["active"] is True
    assert rows["a"]["partner"] is True and rows["b"]["partner"] is False  # b: by gossip
    code, out, err = run(capsys, "forget-peer", "--path", db, "a")
    assert (code, out, err) == (0, "ok forgot a\n", "")
    code, out, _ = run(capsys, "members", "--path", db)
    lines = dict(line.split("\t", 1) for line in out.splitlines())
    assert lines["a"].endswith("\tinactive\tpartner") and lines["b"].endswith("\tactive\tgossip")
    assert f"received_through={7 << 16}" in lines["a"]
    code, out, err = run(capsys, "forget-peer", "--path", db, "zz")
    assert code == 0 and "'zz' was not a known member" in err
    assert run(capsys, "members", "--path", str(tmp_path / "nope"))[0] == 2


# --- read-only commands and errors a user can act on (issue 11) --------------------------


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: what "changed nothing" compares."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])
def test_reading_commands_change_nothing_also_on_read_only_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    db = tmp_path / "db"
    with crdt_kv.open(db, backend=backend) as s:
        s.put("k", "v")
    before = _tree(db)
    modes = {p: p.stat().st_mode for p in [db, *db.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        for argv in (["get", "k"], ["scan"], ["info"], ["members"], ["conflicts"]):
            code, _out, err = run(capsys, *argv, "--path", str(db), "--backend", backend)
            assert code == 0, (argv, err)
        assert run(capsys, "get", "k", "--path", str(db), "--backend", backend)[1] == '"v"\n'
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert _tree(db) == before


def test_get_with_the_wrong_backend_says_which_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db"
    with crdt_kv.open(db) as s:
        s.put("k", "v")
    before = _tree(db)
    for argv in (["get", "k"], ["put", "k", "w"], ["info"]):
        code, _, err = run(capsys, *argv, "--path", str(db), "--backend", "sqlite")
        assert code == 2 and "uses the rocksdb backend, not sqlite" in err
    assert _tree(db) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "info", "--path", str(empty))
    assert code == 2 and "StoreNotFoundError" in err and repr(str(empty)) in err
    code, _, err = run(capsys, "forget-peer", "p", "--path", str(empty))
    assert code == 2 and "StoreNotFoundError" in err
    assert list(empty.iterdir()) == []


def test_put_with_the_memory_backend_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["put", "k", "v"], ["del", "k"]):
        code, out, err = run(capsys, *argv, "--backend", "memory")
        assert code == 2 and out == "" and "would write to a store that vanishes" in err


def test_values_json_cannot_hold_print_as_valid_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "db")
    big = 7**6000  # past Python's 4,300-digit str() limit, as a peer may send
    value = [float("nan"), float("inf"), -float("inf"), big, -big, {1: 2.5, "b": b"x"}]
    with crdt_kv.open(db) as s:
        s.put("k", value)
        s.put("n", float("nan"))
    code, out, _ = run(capsys, "get", "k", "--path", db)
    assert code == 0
    assert json.loads(out) == [
        {"$float": "NaN"},
        {"$float": "Infinity"},
        {"$float": "-Infinity"},
        {"$int": hex(big)},
        {"$int": hex(-big)},
        {"1": 2.5, "b": "b'x'"},
    ]
    assert int(json.loads(out)[3]["$int"], 16) == big
    code, out, _ = run(capsys, "scan", "--path", db)
    assert code == 0
    for line in out.splitlines():
        json.loads(line.split("\t", 1)[1])


def test_no_failure_prints_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "db")
    with crdt_kv.open(db) as s:
        s.put("k", "v")

    def boom(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device", db)

    monkeypatch.setattr(crdt_kv, "open", boom)
    code, _, err = run(capsys, "get", "k", "--path", db)
    assert (code, err) == (2, f"error: No space left on device: {db!r}\n")

    def bug(*_: object, **__: object) -> None:
        raise KeyError("x")

    monkeypatch.setattr(crdt_kv, "open", bug)
    code, _, err = run(capsys, "get", "k", "--path", db)
    assert code == 70 and err.startswith("error: unexpected KeyError") and err[-1] == "\n"


def test_read_commands_work_while_another_process_writes_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node holds the RocksDB store (its LOCK) and keeps writing; get/scan/info read it."""
    db = tmp_path / "db"
    writer = (
        "import itertools, sys, crdt_kv\n"
        "s = crdt_kv.open(sys.argv[1])\n"
        "s.put('first', 1)\n"
        "print('ready', flush=True)\n"
        "for i in itertools.count():\n"
        "    s.put(f'w{i % 500}', i)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, "-c", writer, str(db)], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            for _ in range(3):
                assert run(capsys, "get", "first", "--path", str(db)) == (0, "1\n", "")
                code, out, err = run(capsys, "scan", "--path", str(db), "--limit", "5")
                assert code == 0 and out.startswith("first\t1\n"), err
                code, out, err = run(capsys, "info", "--path", str(db))
                assert code == 0 and "live keys" in out, err
            assert proc.poll() is None, "the writer must still be running (holding the store)"
        finally:
            proc.kill()
    assert not any(
        p.name == "rocksdict-config.json" and p.stat().st_size == 0 for p in db.iterdir()
    )
