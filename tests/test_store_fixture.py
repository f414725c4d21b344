"""A store created by the release before siblings (format 1, commit c967e0d) opens with
today's code, keeps its data and digest, and stays writable in ``lww`` mode."""

from __future__ import annotations

import pathlib
import random
import shutil

import pytest

import crdt_kv
from crdt_kv.errors import ConfigError
from crdt_kv.testing import ManualClock

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
DIGEST = "c5c7c9694496bcc29d1af9623552c4828afce32a27d601a420434ea140187daa"


@pytest.fixture(params=[("rocksdb", "format1-rocksdb"), ("sqlite", "format1.sqlite")])
def old_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> tuple[str, str]:
    backend, name = request.param
    src = FIXTURES / name
    dst = tmp_path / name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return backend, str(dst)


def test_format1_store_opens_with_its_data(old_store: tuple[str, str]) -> None:
    backend, path = old_store
    clock = ManualClock(1_800_000_000_000)
    with crdt_kv.open(path, backend=backend, clock=clock, rng=random.Random(1)) as s:
        assert s.peer_id == "fixture-a"
        assert s.conflict_mode == "lww"
        assert len(s) == 20
        assert s.digest().hex() == DIGEST
        assert s.get("k07") == {"n": 7, "s": "x" * 7}
        assert s.get("k05") == "from-b"
        assert s.get("b-only") == [1, 2, 3]
        assert "k03" not in s
        tomb = s.entry("never-written")
        assert tomb is not None and tomb.deleted
        assert [e.value for e in s.get_all("k05")] == ["from-b"]
        assert s.get_all("k03") == []
        s.put("k03", "back")
        seq = s.last_seq
    with crdt_kv.open(path, backend=backend, clock=clock, rng=random.Random(1)) as s:
        assert s.get("k03") == "back" and s.last_seq == seq and len(s) == 21


def test_format1_store_refuses_siblings_mode(old_store: tuple[str, str]) -> None:
    backend, path = old_store
    with pytest.raises(ConfigError, match=r"lww.*siblings"):
        crdt_kv.open(path, backend=backend, conflicts="siblings")
