"""``crdt-kv serve --config node.toml`` as real processes (crdt_kv/net/cli.py).

Two server processes own one RocksDB store each and are configured as each other's
peers. Data is seeded with the library before they start (a running server holds the
store's lock); a third node in this process joins live and writes. Convergence is read
over the wire by pulling into fresh memory stores, and after SIGINT/SIGTERM the stores
are reopened to check they were closed cleanly (an unclean close of a store without
``sync_writes`` rotates its incarnation).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from net_helpers import free_tcp_port, wait_until

import crdt_kv
from crdt_kv import Store

CRDT_KV = Path(sys.executable).with_name("crdt-kv")


def write_config(
    path: Path, peer: str, listen: str, peers: list[str], *, conflicts: str = "", **node: Any
) -> Path:
    lines = [
        "[storage]",
        'backend = "rocksdb"',
        f'path = "{peer}-data"',
        *([f'conflicts = "{conflicts}"'] if conflicts else []),
        "",
        "[node]",
        f'peer_id = "{peer}"',
        f'listen = "{listen}"',
        "peers = [" + ", ".join(f'"{p}"' for p in peers) + "]",
        "sync_interval_s = 0.5",
    ]
    lines += [
        f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in node.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Server:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.address = ""
        self._err = b""

    async def read_listening(self) -> str:
        assert self.proc.stdout is not None
        buf = b""
        with trio.fail_after(15):
            while b"\n" not in buf:
                chunk = await self.proc.stdout.receive_some(4096)
                assert chunk, "server exited before listening"
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        assert line.startswith("listening on "), line
        self.address = line.removeprefix("listening on ")
        return self.address

    async def stderr_text(self) -> str:
        """Everything the server wrote to stderr (read to its end: call once it exits)."""
        assert self.proc.stderr is not None
        out = self._err
        while chunk := await self.proc.stderr.receive_some(1 << 16):
            out += chunk
        return out.decode()

    async def wait_stderr(self, needle: str, timeout: float = 15) -> None:
        """Read stderr until it holds ``needle``: the server logs on its own schedule."""
        assert self.proc.stderr is not None
        with trio.fail_after(timeout):
            while needle.encode() not in self._err:
                chunk = await self.proc.stderr.receive_some(1 << 16)
                assert chunk, f"server closed stderr without logging {needle!r}"
                self._err += chunk


async def start_server(config: Path, *extra: str) -> Server:
    proc = await trio.lowlevel.open_process(
        [str(CRDT_KV), "serve", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return Server(proc)


async def pull_copy(address: str, conflicts: str = "lww") -> Store:
    """What the server at ``address`` holds, pulled into a fresh memory store."""
    copy = crdt_kv.open(backend="memory", conflicts=conflicts)
    host, _, port = address.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await crdt_kv.replicate(copy, stream, mode="pull")
    return copy


def seed(path: Path, peer: str, n: int, shared: str) -> bytes:
    with crdt_kv.open(path, backend="rocksdb", peer_id=peer) as s:
        with s.batch() as b:
            for i in range(n):
                b.put(f"{peer}:{i:03d}", i)
        s.put("shared", shared)
        return s.incarnation


async def test_two_cli_servers_converge_relay_live_and_stop_cleanly(tmp_path: Path) -> None:
    pa, pb = free_tcp_port(), free_tcp_port()
    la, lb = f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"
    cfg_a = write_config(tmp_path / "a.toml", "a", la, [lb])
    cfg_b = write_config(tmp_path / "b.toml", "b", lb, [la])
    inc_a = seed(tmp_path / "a-data", "a", 150, "from a")
    inc_b = seed(tmp_path / "b-data", "b", 100, "from b")  # written later: wins "shared"

    with trio.fail_after(28):
        a = await start_server(cfg_a)
        b = await start_server(cfg_b, "-v")
        try:
            assert await a.read_listening() == la
            assert await b.read_listening() == lb

            async def converged() -> bool:
                ca, cb = await pull_copy(la), await pull_copy(lb)
                try:
                    return len(ca) == len(cb) == 251 and ca.digest() == cb.digest()
                finally:
                    ca.close()
                    cb.close()

            while not await converged():
                await trio.sleep(0.1)

            # A library node joins A only; its write reaches B through A, live.
            lib = crdt_kv.open(tmp_path / "lib", backend="rocksdb", peer_id="lib")
            try:
                async with crdt_kv.serve(lib, peers=[la], live=True) as node:
                    await wait_until(lambda: len(lib) == 251, what="lib caught up")
                    await wait_until(lambda: node.stats()["a"]["live"], what="lib live")
                    lib.put("from lib", {"ok": True})
                    while True:
                        cb = await pull_copy(lb)
                        seen = cb.get("from lib")
                        cb.close()
                        if seen == {"ok": True}:
                            break
                        await trio.sleep(0.05)
            finally:
                lib.close()
        finally:
            for s, sig in ((a, signal.SIGINT), (b, signal.SIGTERM)):
                if s.proc.returncode is None:
                    s.proc.send_signal(sig)
        err_a, err_b = await a.stderr_text(), await b.stderr_text()
        assert await a.proc.wait() == 0, err_a
        assert await b.proc.wait() == 0, err_b
    assert "stopped by SIGINT" in err_a
    assert "stopped by SIGTERM" in err_b
    assert "Traceback" not in err_a + err_b

    with (
        crdt_kv.open(tmp_path / "a-data", backend="rocksdb") as sa,
        crdt_kv.open(tmp_path / "b-data", backend="rocksdb") as sb,
    ):
        # Same incarnation after reopening: both servers closed their stores cleanly.
        assert (sa.incarnation, sb.incarnation) == (inc_a, inc_b)
        assert sa.digest() == sb.digest()
        assert len(sa) == 252
        assert sa.get("shared") == sb.get("shared") == "from b"
        assert sb.get("from lib") == {"ok": True} and sb.get("a:149") == 149


async def test_cli_servers_in_siblings_mode_keep_concurrent_writes(tmp_path: Path) -> None:
    pa, pb = free_tcp_port(), free_tcp_port()
    la, lb = f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"
    cfg_a = write_config(tmp_path / "a.toml", "a", la, [lb], conflicts="siblings")
    cfg_b = write_config(tmp_path / "b.toml", "b", lb, [la], conflicts="siblings")
    with crdt_kv.open(tmp_path / "a-data", peer_id="a", conflicts="siblings") as s:
        s.put("cart", ["milk"])
        s.put("a-only", 1)
    # b's store is created by the CLI from its config, in the mode the config names.
    put = subprocess.run(
        [str(CRDT_KV), "put", "cart", '["eggs"]', "--json", "--config", str(cfg_b)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert put.returncode == 0, put.stderr

    with trio.fail_after(28):
        a = await start_server(cfg_a)
        b = await start_server(cfg_b)
        try:
            await a.read_listening()
            await b.read_listening()

            async def converged() -> bool:
                ca, cb = await pull_copy(la, "siblings"), await pull_copy(lb, "siblings")
                try:
                    sibs = [[e.value for e in c.get_all("cart")] for c in (ca, cb)]
                    return sibs[0] == sibs[1] and len(sibs[0]) == 2 and "a-only" in cb
                finally:
                    ca.close()
                    cb.close()

            while not await converged():
                await trio.sleep(0.1)
            # A replica in the other mode is refused at the handshake, naming both modes.
            with pytest.raises(crdt_kv.ProtocolError, match=r"'siblings'.*'lww'"):
                (await pull_copy(la, "lww")).close()
        finally:
            for s_ in (a, b):
                if s_.proc.returncode is None:
                    s_.proc.send_signal(signal.SIGINT)
        err_a, err_b = await a.stderr_text(), await b.stderr_text()
        assert await a.proc.wait() == 0, err_a
        assert await b.proc.wait() == 0, err_b

    with (
        crdt_kv.open(tmp_path / "a-data") as sa,
        crdt_kv.open(tmp_path / "b-data") as sb,
    ):
        assert sa.conflict_mode == sb.conflict_mode == "siblings"
        assert sa.digest() == sb.digest()
        got = [(e.value, e.hlc, e.peer) for e in sb.get_all("cart")]
        assert got == [(e.value, e.hlc, e.peer) for e in sa.get_all("cart")]
        assert {e.peer for e in sa.get_all("cart")} == {"a", "b"}
        assert [k for k, _ in sb.conflicts()] == ["cart"]


async def test_serve_reports_bad_config_and_busy_port(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nlisten = "127.0.0.1:0"\nbogus = 1\n')
    r = subprocess.run(
        [str(CRDT_KV), "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 2 and "node.bogus" in r.stderr

    inc = seed(tmp_path / "c-data", "c", 1, "x")
    with crdt_kv.open(backend="memory") as other:
        async with crdt_kv.serve(other, listen="127.0.0.1:0") as node:
            taken = f"127.0.0.1:{node.address[1]}"
            cfg = write_config(tmp_path / "c.toml", "c", taken, [])
            result = await trio.run_process(
                [str(CRDT_KV), "serve", "--config", str(cfg)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 2
    assert b"cannot serve" in result.stderr
    # The store was closed on the way out: it reopens with the same incarnation.
    with crdt_kv.open(tmp_path / "c-data", backend="rocksdb") as s:
        assert s.incarnation == inc


@pytest.mark.parametrize("flag", ["--peer", "--listen", "--metrics-listen", "--client-listen"])
def test_serve_flag_rejects_malformed_address(tmp_path: Path, flag: str) -> None:
    cfg = write_config(tmp_path / "d.toml", "d", "127.0.0.1:0", [])
    r = subprocess.run(
        [str(CRDT_KV), "serve", "--config", str(cfg), flag, "nonsense"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "nonsense" in r.stderr and "Traceback" not in r.stderr


async def test_serve_prints_the_catch_up_report_before_listening(tmp_path: Path) -> None:
    refused = f"127.0.0.1:{free_tcp_port()}"
    with crdt_kv.open(backend="memory", peer_id="b") as b:
        b.put("from-b", 1)
        async with crdt_kv.serve(b, listen="127.0.0.1:0") as nb:
            there = f"127.0.0.1:{nb.address[1]}"
            cfg = write_config(
                tmp_path / "a.toml", "a", "127.0.0.1:0", [there, refused], catch_up=True
            )
            server = await start_server(cfg, "--catch-up-timeout", "20")
            proc = server.proc
            assert proc.stdout is not None
            buf = b""
            try:
                with trio.fail_after(30):
                    while b"listening on " not in buf:
                        chunk = await proc.stdout.receive_some(4096)
                        assert chunk, "server exited before listening"
                        buf += chunk
            finally:
                proc.send_signal(signal.SIGINT)
                with trio.fail_after(15):
                    await proc.wait()
    lines = buf.decode().splitlines()
    listening = next(i for i, line in enumerate(lines) if line.startswith("listening on "))
    report = lines[:listening]
    assert report[0].startswith("catch-up incomplete: caught up from 1 of 2 peers"), report
    assert f"  caught up  {there}  peer b" in report
    assert any(line.startswith(f"  failed     {refused}  connect failed") for line in report)
    assert proc.returncode == 0
    with crdt_kv.open(tmp_path / "a-data", backend="rocksdb") as a:
        assert a.get("from-b") == 1


async def test_serve_client_listen_takes_writes_with_stamps(tmp_path: Path) -> None:
    """``--client-listen`` prints its address last; writes through it are in the store
    after a clean stop, with the stamps the client was given."""
    cfg = write_config(tmp_path / "f.toml", "f", "127.0.0.1:0", [])
    server = await start_server(cfg, "--client-listen", "127.0.0.1:0")
    proc = server.proc
    assert proc.stdout is not None
    buf = b""
    try:
        with trio.fail_after(20):
            while b"client api on " not in buf or not buf.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "server exited before its client endpoint"
                buf += chunk
        lines = buf.decode().splitlines()
        assert lines[0].startswith("listening on ") and lines[-1].startswith("client api on ")
        address = lines[-1].removeprefix("client api on ")

        def write() -> tuple[crdt_kv.Version, crdt_kv.Version]:
            with crdt_kv.Client(address) as c:
                return c.put("k", "v"), c.delete("gone")

        put, gone = await trio.to_thread.run_sync(write)
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()
    assert proc.returncode == 0
    with crdt_kv.open(tmp_path / "f-data", backend="rocksdb") as s:
        e, d = s.entry("k"), s.entry("gone")
        assert e is not None and (e.value, e.hlc, e.peer) == ("v", put.hlc, "f")
        assert d is not None and d.deleted and d.hlc == gone.hlc


def test_serve_refuses_a_client_endpoint_off_loopback(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "g.toml", "g", "127.0.0.1:0", [])
    r = subprocess.run(
        [str(CRDT_KV), "serve", "--config", str(cfg), "--client-listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "not a loopback address" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_serve_rejects_a_negative_catch_up_timeout(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "e.toml", "e", "127.0.0.1:0", [])
    r = subprocess.run(
        [str(CRDT_KV), "serve", "--config", str(cfg), "--catch-up", "--catch-up-timeout", "-1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "catch_up_timeout_s" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


async def test_cli_server_over_tls_syncs_with_certified_peers_only(tmp_path: Path) -> None:
    from tls_helpers import Pki

    from crdt_kv.net.tls import PEER_URI_PREFIX

    pki = Pki(tmp_path / "pki")
    pki.issue("a", uris=[PEER_URI_PREFIX + "a"])
    seed(tmp_path / "a-data", "a", 3, "from-a")
    cfg = write_config(tmp_path / "a.toml", "a", "127.0.0.1:0", [])
    with cfg.open("a") as fh:  # relative paths: resolved against the config file's directory
        fh.write('\n[tls]\ncert = "pki/a.pem"\nkey = "pki/a.key"\nca = "pki/ca.pem"\n')
        fh.write('allowed_peers = ["b"]\n')
    server = await start_server(cfg)
    try:
        address = await server.read_listening()
        with crdt_kv.open(backend="memory", peer_id="b") as b:
            async with crdt_kv.serve(b, peers=[address], tls=pki.tls("b"), live=False) as nb:
                with trio.fail_after(20):
                    await wait_until(lambda: b.get("shared") == "from-a", what="sync over TLS")
                assert not nb.peer_book.refusals
            with pytest.raises(crdt_kv.CrdtKvError):  # plaintext: the server hangs up
                await pull_copy(address)
            await server.wait_stderr("refused")  # logged at WARNING, the default level
    finally:
        server.proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            await server.proc.wait()
    assert server.proc.returncode == 0
    assert "refused" in await server.stderr_text()  # logged at WARNING, the default level


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--tls-cert", "x.pem"], "missing --tls-key, --tls-ca"),
        (["--tls-cert", "nope.pem", "--tls-key", "k.pem", "--tls-ca", "c.pem"], "nope.pem"),
    ],
)
def test_serve_tls_flags_are_checked(tmp_path: Path, flags: list[str], said: str) -> None:
    cfg = write_config(tmp_path / "f.toml", "f", "127.0.0.1:0", [])
    r = subprocess.run(
        [str(CRDT_KV), "serve", "--config", str(cfg), *flags],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert said in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


def test_tune_python_gc_freezes_start_up_objects_and_collects_less_often() -> None:
    import gc

    from crdt_kv.net.cli import GC_THRESHOLDS, tune_python_gc

    before = gc.get_threshold()
    try:
        tune_python_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_python_gc_flag_takes_only_its_choices(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "g.toml", "g", "127.0.0.1:0", [])
    r = subprocess.run(
        [str(CRDT_KV), "serve", "--config", str(cfg), "--python-gc", "off"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 2 and "--python-gc" in r.stderr and "tuned" in r.stderr
