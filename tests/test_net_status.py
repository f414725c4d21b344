"""``crdt-kv status HOST:PORT`` (crdt_kv/net/status.py): judging a metrics page, and the
command against a running ``crdt-kv serve`` process (table, ``--json``, exit codes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from net_helpers import free_tcp_port

import crdt_kv
from crdt_kv.net.status import StatusError, judge, metrics_url, parse_metrics

CRDT_KV = Path(sys.executable).with_name("crdt-kv")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

PAGE = """\
# TYPE crdt_kv_node info
crdt_kv_node_info{peer_id="a",cluster_id="c",version="0.1.0"} 1
# TYPE crdt_kv_peer_lag_seconds gauge
crdt_kv_peer_lag_seconds{peer="b"} 2.0
crdt_kv_peer_lag_seconds{peer="slow"} 300.0
crdt_kv_peer_lag_seconds{peer="gone"} 9000.0
# TYPE crdt_kv_peer_last_contact_timestamp_seconds gauge
crdt_kv_peer_last_contact_timestamp_seconds{peer="b"} 990.0
# TYPE crdt_kv_peer_connected gauge
crdt_kv_peer_connected{peer="b"} 1
crdt_kv_peer_connected{peer="slow"} 0
crdt_kv_peer_connected{peer="gone"} 0
crdt_kv_peer_connected{peer="10.0.0.9:7000"} 0
# TYPE crdt_kv_peer_live gauge
crdt_kv_peer_live{peer="b"} 1
# TYPE crdt_kv_peer_up gauge
crdt_kv_peer_up{peer="b"} 1
crdt_kv_peer_up{peer="slow"} 1
crdt_kv_peer_up{peer="gone"} 0
crdt_kv_peer_up{peer="10.0.0.9:7000"} 0
crdt_kv_peer_up{peer="(unidentified)"} 0
# TYPE crdt_kv_peer_dialed gauge
crdt_kv_peer_dialed{peer="b"} 1
crdt_kv_peer_dialed{peer="slow"} 1
crdt_kv_peer_dialed{peer="gone"} 0
crdt_kv_peer_dialed{peer="10.0.0.9:7000"} 1
# TYPE crdt_kv_peer_errors counter
crdt_kv_peer_errors_total{peer="10.0.0.9:7000"} 4
crdt_kv_peer_errors_total{peer="(unidentified)"} 2
# TYPE crdt_kv_store_live_keys gauge
crdt_kv_store_live_keys 12
"""


def test_judge_flags_unreachable_and_lagging_peers_it_dials_or_talks_to() -> None:
    report = judge("u", parse_metrics(PAGE, "u"), max_lag_s=60, now=1000.0)
    rows = {p.peer: p for p in report.peers}
    assert rows["b"].state == "live" and rows["b"].last_contact_age_s == 10.0
    assert rows["slow"].state == "idle" and rows["slow"].lag_seconds == 300.0
    assert rows["10.0.0.9:7000"].state == "unreachable" and rows["10.0.0.9:7000"].errors == 4
    assert not rows["gone"].judged and not rows["(unidentified)"].judged
    assert report.problems == ["peer 10.0.0.9:7000 unreachable", "peer slow lags 300.0 s > 60 s"]
    assert not report.healthy
    assert report.store == {"crdt_kv_store_live_keys": 12.0}
    relaxed = judge("u", parse_metrics(PAGE, "u"), max_lag_s=600, now=1000.0)
    assert relaxed.problems == ["peer 10.0.0.9:7000 unreachable"]


def test_pages_that_are_not_a_nodes_metrics_are_status_errors() -> None:
    with pytest.raises(StatusError, match="not a crdt_kv node"):
        parse_metrics("# TYPE up gauge\nup 1\n", "u")
    with pytest.raises(StatusError, match="did not answer Prometheus metrics"):
        parse_metrics("crdt_kv_node_info{peer_id= 1 2 3\n", "u")
    with pytest.raises(StatusError, match="not HOST:PORT"):
        metrics_url("localhost")
    assert metrics_url("h:1") == "http://h:1/metrics"
    assert metrics_url("http://h:1/m") == "http://h:1/m"


def write_config(path: Path, peers: list[str], metrics: str) -> Path:
    quoted = ", ".join(f'"{p}"' for p in peers)
    path.write_text(
        f'[storage]\npath = "a-data"\n\n[node]\npeer_id = "a"\nlisten = "127.0.0.1:0"\n'
        f'peers = [{quoted}]\nmetrics_listen = "{metrics}"\n'
    )
    return path


async def status(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [str(CRDT_KV), "status", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=ENV,
    )


async def read_lines(proc: trio.Process, n: int) -> list[str]:
    assert proc.stdout is not None
    out = b""
    while out.count(b"\n") < n:
        chunk = await proc.stdout.receive_some(4096)
        assert chunk, "serve exited early"
        out += chunk
    return out.decode().splitlines()


async def test_status_against_a_running_serve(tmp_path: Path) -> None:
    metrics, b_listen = f"127.0.0.1:{free_tcp_port()}", f"127.0.0.1:{free_tcp_port()}"
    cfg = write_config(tmp_path / "a.toml", [b_listen], metrics)
    b = crdt_kv.open(backend="memory", peer_id="b")
    proc = await trio.lowlevel.open_process(
        [str(CRDT_KV), "serve", "--config", str(cfg), "--sync-interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        with trio.fail_after(40):
            lines = await read_lines(proc, 2)
            assert lines[0].startswith("listening on ")
            assert lines[1] == f"metrics on http://{metrics}/metrics"
            async with crdt_kv.serve(b, listen=b_listen):
                while (r := await status(metrics, "--json")).returncode != 0:
                    await trio.sleep(0.1)
                doc = json.loads(r.stdout)
                assert doc["healthy"] and doc["node"]["peer_id"] == "a"
                assert [(p["peer"], p["state"]) for p in doc["peers"]] == [("b", "live")]
                table = await status(metrics)
                text = table.stdout.decode()
                assert table.returncode == 0, table.stderr
                assert "b" in text and "live" in text and "verdict: HEALTHY" in text
            # The peer went away: a configured peer now unreachable fails the check.
            while (r := await status(metrics, "--max-lag-s", "3600")).returncode != 1:
                assert r.returncode == 0, r.stderr
                await trio.sleep(0.1)
            assert b"verdict: UNHEALTHY: peer b unreachable" in r.stdout
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        b.close()
    assert proc.stderr is not None
    err = b""
    while chunk := await proc.stderr.receive_some(1 << 16):
        err += chunk
    assert b"Traceback" not in err, err


async def test_status_exits_2_when_the_endpoint_cannot_be_read() -> None:
    closed = f"127.0.0.1:{free_tcp_port()}"
    r = await status(closed)
    assert r.returncode == 2 and r.stdout == b""
    err = r.stderr.decode()
    assert err.startswith(f"error: cannot read http://{closed}/metrics") and "Traceback" not in err
    r = await status(closed, "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["healthy"] is False
    r = await status("nonsense")
    assert r.returncode == 2 and b"not HOST:PORT" in r.stderr
    # A replication port speaks CBOR, not HTTP: still a clean error.
    store = crdt_kv.open(backend="memory", peer_id="x")
    async with crdt_kv.serve(store, handshake_timeout_s=1.0) as node:
        host, port = node.address
        r = await status(f"{host}:{port}", "--timeout", "3")
    assert r.returncode == 2 and b"not an HTTP answer (BadStatusLine)" in r.stderr, r.stderr
    store.close()
