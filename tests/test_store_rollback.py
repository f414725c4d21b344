"""Rollback detection on the store: cursors carry a proof that a restored copy fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import crdt_kv
from crdt_kv.store import Store


def _pull(dst: Store, src: Store) -> None:
    dst.apply_raw(list(src.raw_changes(0)), cursor=(src.peer_id, src.incarnation, src.last_seq))


def test_a_cursor_stores_the_key_and_stamp_of_the_newest_entry(tmp_path: Path) -> None:
    a = crdt_kv.open(tmp_path / "a", peer_id="a")
    b = crdt_kv.open(tmp_path / "b", peer_id="b")
    a.put("x", 1)
    a.put("y", 2)
    _pull(b, a)
    proof = b.cursor_proof("a", a.incarnation)
    assert proof == (b"y", a.entry("y").hlc)  # type: ignore[union-attr]
    assert b.cursor("a", a.incarnation) == a.last_seq
    b.apply_raw([], cursor=("a", a.incarnation, a.last_seq + 3))  # nothing new: proof kept
    assert b.cursor_proof("a", a.incarnation) == proof
    assert a.check_cursor(a.last_seq, proof) is None
    a.put("y", 3)  # a newer state of the proof's key is consistent
    assert a.check_cursor(2, proof) is None
    a.close()
    b.close()


def test_a_store_restored_from_a_copy_fails_its_peers_proof(tmp_path: Path) -> None:
    a = crdt_kv.open(tmp_path / "a", peer_id="a")
    b = crdt_kv.open(tmp_path / "b", peer_id="b")
    a.put("x", 1)
    a.close()
    shutil.copytree(tmp_path / "a", tmp_path / "backup")
    a = crdt_kv.open(tmp_path / "a", peer_id="a")
    a.put("y", 2)
    a.put("z", 3)
    _pull(b, a)
    since, proof = b.cursor("a", a.incarnation), b.cursor_proof("a", a.incarnation)
    a.close()
    shutil.rmtree(tmp_path / "a")
    shutil.copytree(tmp_path / "backup", tmp_path / "a")
    a = crdt_kv.open(tmp_path / "a", peer_id="a")  # same incarnation, shorter log
    assert ("a", a.incarnation) in b.cursors()
    why = a.check_cursor(since, proof)
    assert why is not None and "ends at 1" in why
    a.put("w", 4)
    a.put("v", 5)  # the log is long again: only the proof shows the rollback
    why = a.check_cursor(since, proof)
    assert why is not None and "'z'" in why and "gone" in why
    old = a.incarnation
    assert a.rotate_incarnation() != old and a.incarnation != old
    a.close()
    with crdt_kv.open(tmp_path / "a") as again:
        assert again.incarnation == a.incarnation  # persisted
    b.close()
