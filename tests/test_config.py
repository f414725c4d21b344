"""Configuration (crdt_kv/config.py): TOML files and mappings, validation, overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import crdt_kv
from crdt_kv.config import KNOWN, load_config
from crdt_kv.errors import ConfigError
from crdt_kv.testing import ManualClock

FULL_TOML = """\
[storage]
backend = "sqlite"
path = "data/replica"
sync_writes = true
key_encoding = "binary"
value_encoding = "json"

[node]
peer_id = "from-file"
max_offset_ms = 250
cluster_id = "c1"
listen = "127.0.0.1:0"
peers = ["127.0.0.1:7001", "127.0.0.1:7002"]
sync_interval_s = 0.5
live = false
mode = "pull"
discovery = false
multicast_group = "239.255.0.1"
multicast_port = 7400
"""


def write(tmp_path: Path, text: str, name: str = "crdt.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_toml_file_configures_the_store(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    cfg = write(tmp_path / "etc", FULL_TOML)
    loaded = load_config(cfg)
    assert loaded["storage"]["path"] == str(tmp_path / "etc" / "data" / "replica")
    assert loaded["node"]["peers"] == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert loaded["node"]["sync_interval_s"] == 0.5
    with crdt_kv.open(config=str(cfg), clock=ManualClock()) as db:
        assert db.backend.name == "sqlite"
        assert db.backend.power_safe  # sync_writes = true
        assert db.peer_id == "from-file"
        assert (db.key_encoding, db.value_encoding) == ("binary", "json")
        assert db.hlc.max_offset_ms == 250
        db.put(b"k", {"a": [1]})
    # Relative paths are resolved against the file's directory, not the working directory.
    assert (tmp_path / "etc" / "data" / "replica" / "crdt_kv.sqlite3").is_file()
    with crdt_kv.open(config=cfg, clock=ManualClock()) as db:  # a Path works too
        assert db.get(b"k") == {"a": [1]}


def test_a_mapping_configures_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sqlite3")
    config = {"storage": {"backend": "sqlite", "path": path}, "node": {"peer_id": "m"}}
    with crdt_kv.open(config=config, clock=ManualClock()) as db:
        assert db.backend.name == "sqlite" and db.peer_id == "m"
        assert not db.backend.power_safe
        db.put("k", 1)
    assert os.path.isfile(path)


def test_relative_paths_in_a_mapping_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config({"storage": {"path": "rel"}})["storage"]["path"] == "rel"
    with crdt_kv.open(config={"storage": {"path": "rel", "backend": "sqlite"}}) as db:
        db.put("k", 1)
    assert (tmp_path / "rel" / "crdt_kv.sqlite3").is_file()


def test_an_absolute_path_in_a_file_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    cfg = write(tmp_path, f'[storage]\npath = "{target}"\n')
    assert load_config(cfg)["storage"]["path"] == str(target)


def test_keyword_arguments_override_the_config(tmp_path: Path) -> None:
    cfg = write(tmp_path, FULL_TOML)
    kw_path = str(tmp_path / "kw")
    with crdt_kv.open(
        kw_path,
        config=cfg,
        backend="rocksdb",
        peer_id="kw",
        key_encoding="utf-8",
        value_encoding="cbor",
        sync_writes=False,
        max_offset_ms=1000,
        clock=ManualClock(),
    ) as db:
        assert db.backend.name == "rocksdb" and not db.backend.power_safe
        assert db.peer_id == "kw"
        assert (db.key_encoding, db.value_encoding) == ("utf-8", "cbor")
        assert db.hlc.max_offset_ms == 1000
    assert os.path.isdir(kw_path)
    assert not (tmp_path / "data").exists()  # the config's path was not used


def test_keyword_false_overrides_a_true_config(tmp_path: Path) -> None:
    cfg = {"storage": {"backend": "sqlite", "path": str(tmp_path / "s"), "sync_writes": True}}
    with crdt_kv.open(config=cfg, sync_writes=False) as db:
        assert not db.backend.power_safe


def test_no_config_means_empty_tables() -> None:
    empty: dict[str, dict[str, Any]] = {"storage": {}, "node": {}, "tls": {}}
    assert load_config(None) == empty
    assert load_config({}) == empty
    assert load_config({"storage": {}}) == empty


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"stroage": {"backend": "memory"}}, "[stroage]"),
        ({"storage": {"backnd": "memory"}}, "storage.backnd"),
        ({"node": {"peerid": "x"}}, "node.peerid"),
        ({"node": {"replication": {"x": 1}}}, "node.replication"),
    ],
)
def test_unknown_tables_and_keys_are_named(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert named in str(info.value)
    with pytest.raises(ConfigError):
        crdt_kv.open(config=config)


def test_an_unknown_key_in_a_file_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[storage]\nbackend = "memory"\ncompression = "zstd"\n')
    with pytest.raises(ConfigError, match=r"storage\.compression; known: backend, path"):
        crdt_kv.open(config=cfg)


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("storage", "backend", 3),
        ("storage", "path", ["a"]),
        ("storage", "sync_writes", "yes"),
        ("storage", "sync_writes", 1),
        ("storage", "value_encoding", None),
        ("node", "peer_id", 7),
        ("node", "max_offset_ms", 1.5),
        ("node", "max_offset_ms", True),
        ("node", "max_offset_ms", "500"),
        ("node", "sync_interval_s", True),
        ("node", "sync_interval_s", "1"),
        ("node", "peers", "127.0.0.1:1"),
        ("node", "peers", [1, 2]),
        ("node", "live", "true"),
        ("node", "multicast_port", 7.0),
        ("node", "catch_up", "yes"),
        ("node", "catch_up", 1),
        ("node", "catch_up_timeout_s", "30"),
        ("node", "catch_up_timeout_s", False),
        ("node", "source_penalty_max_s", "60"),
        ("tls", "cert", 3),
        ("tls", "ca", ["ca.pem"]),
        ("tls", "allowed_peers", "a"),
        ("tls", "allowed_peers", {"a": 1}),
    ],
)
def test_wrong_types_are_config_errors(table: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"{table}\.{key}"):
        load_config({table: {key: value}})


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("storage", "backend", ""),
        ("storage", "path", ""),
        ("node", "peer_id", ""),
        ("node", "mode", "sideways"),
        ("storage", "conflicts", "crdt"),
        ("storage", "conflicts", "LWW"),
        ("node", "multicast_port", 70000),
        ("node", "multicast_port", -1),
        ("node", "max_offset_ms", -1),
        ("node", "sync_interval_s", 0),
        ("node", "sync_interval_s", float("nan")),
        ("node", "sync_interval_s", float("inf")),
        ("node", "catch_up_timeout_s", -1),
        ("node", "catch_up_timeout_s", float("nan")),
        ("node", "catch_up_timeout_s", float("inf")),
        ("node", "source_penalty_max_s", -1),
        ("node", "source_penalty_max_s", float("inf")),
        ("node", "metrics_max_peers", -1),
        ("node", "metrics_max_peers", "128"),
        ("node", "metrics_listen", "localhost"),
        ("node", "metrics_listen", "127.0.0.1:"),
        ("node", "metrics_listen", "127.0.0.1:70000"),
        ("node", "metrics_listen", "127.0.0.1:\uff19\uff10"),  # fullwidth digits
        ("node", "client_listen", "127.0.0.1"),
        ("node", "client_listen", "127.0.0.1:65536"),
        ("tls", "key", ""),
        ("tls", "allowed_peers", ["a", 1]),
        ("tls", "allowed_peers", ["a", ""]),
    ],
)
def test_out_of_range_values_are_config_errors(table: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"{table}\.{key}"):
        load_config({table: {key: value}})


def test_every_known_key_accepts_its_type() -> None:
    loaded = load_config(
        {
            "storage": {"backend": "memory", "sync_writes": False},
            "node": {
                "max_offset_ms": 0,
                "sync_interval_s": 2,
                "mode": "both",
                "peers": [],
                "catch_up": True,
                "catch_up_timeout_s": 0,
                "source_penalty_max_s": 0,
                "metrics_max_peers": 0,
            },
        }
    )
    assert loaded["node"]["sync_interval_s"] == 2 and loaded["node"]["metrics_max_peers"] == 0
    assert loaded["node"]["catch_up"] is True and loaded["node"]["catch_up_timeout_s"] == 0
    assert set(KNOWN) == {"storage", "node", "tls"}
    for listen in ("127.0.0.1:0", "[::1]:9100", ":9100"):
        assert load_config({"node": {"metrics_listen": listen}})["node"]["metrics_listen"] == listen
    node = load_config({"node": {"client_listen": "127.0.0.1:7500", "client_allow_remote": True}})
    assert node["node"] == {"client_listen": "127.0.0.1:7500", "client_allow_remote": True}


def test_the_conflict_mode_comes_from_the_config_and_is_fixed(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[storage]\nbackend = "sqlite"\npath = "s"\nconflicts = "siblings"\n')
    with crdt_kv.open(config=cfg, peer_id="a", clock=ManualClock()) as db:
        assert db.conflict_mode == "siblings"
    with crdt_kv.open(tmp_path / "s", backend="sqlite") as db:  # the store remembers it
        assert db.conflict_mode == "siblings"
    with pytest.raises(ConfigError, match=r"conflicts='siblings'.*conflicts='lww'"):
        crdt_kv.open(config=cfg, conflicts="lww")  # a keyword overrides the file


def test_a_table_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[storage\] must be a table"):
        load_config(write(tmp_path, 'storage = "sqlite"\n'))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[storage\nbackend = 1\n", "not valid TOML"),
        (b'[storage]\nbackend = "\xff"\n', "not valid TOML"),
        (b"[storage]\nbackend = 'a'\nbackend = 'b'\n", "not valid TOML"),
    ],
)
def test_unreadable_files_are_config_errors(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(p)
    assert str(p) in str(info.value)


def test_missing_file_and_directory_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


@pytest.mark.parametrize("config", [b"/etc/crdt.toml", 5, ["storage"]])
def test_a_config_of_the_wrong_kind(config: Any) -> None:
    with pytest.raises(ConfigError, match="mapping or a TOML path"):
        load_config(config)


def test_the_backend_named_in_the_config_must_exist(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[storage]\nbackend = "leveldb"\npath = "x"\n')
    with pytest.raises(ConfigError, match=r"'leveldb'.*memory.*rocksdb.*sqlite"):
        crdt_kv.open(config=cfg)


TLS_TOML = """\
[storage]
backend = "memory"

[tls]
cert = "certs/node.pem"
key = "/abs/node.key"
ca = "ca.pem"
allowed_peers = ["a", "b"]
"""


def test_tls_table_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, TLS_TOML))
    assert loaded["tls"] == {
        "cert": str(tmp_path / "certs" / "node.pem"),
        "key": "/abs/node.key",
        "ca": str(tmp_path / "ca.pem"),
        "allowed_peers": ["a", "b"],
    }
    # Only a node needs the files: opening the store with this config does not look.
    with crdt_kv.open(config=write(tmp_path, TLS_TOML), peer_id="a") as db:
        assert db.peer_id == "a"


@pytest.mark.parametrize(
    ("tls", "missing"),
    [
        ({"cert": "c.pem", "key": "k.pem"}, "missing: ca"),
        ({"allowed_peers": ["a"]}, "missing: cert, key, ca"),
        ({}, "missing: cert, key, ca"),
    ],
)
def test_tls_table_needs_cert_key_and_ca(tls: dict[str, Any], missing: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[tls\] needs cert, key and ca; {missing}"):
        load_config({"tls": tls})
