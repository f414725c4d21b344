"""The chaos run's independent checker (crdt_kv/testing/chaos/checker.py): it passes a
consistent history and names each kind of failure it exists to catch."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from crdt_kv.testing.chaos import checker
from crdt_kv.testing.chaos.checker import check, read_dump, read_logs


def reg(value: Any, hlc: int, peer: str, deleted: bool = False) -> dict[str, Any]:
    return {"value": None if deleted else value, "hlc": hlc, "peer": peer, "deleted": deleted}


def put(key: str, value: str, node: str, hlc: int | None, status: str = "ok") -> dict[str, Any]:
    op = {"op": "put", "key": key, "value": value, "node": node, "status": status}
    if status == "ok":
        op.update(hlc=hlc, peer=node)
    return op


def delete(key: str, node: str, hlc: int | None, status: str = "ok") -> dict[str, Any]:
    op = {"op": "del", "key": key, "node": node, "status": status}
    if status == "ok":
        op.update(hlc=hlc, peer=node)
    return op


HISTORY = [
    put("a", "v1", "n1", 10),
    put("a", "v2", "n2", 20),  # supersedes v1
    delete("b", "n1", 15),
    put("b", "v3", "n2", 12),  # older than the delete: stays deleted
    put("c", "v4", "n1", None, status="unknown"),  # happened after all
    put("c", "v5", "n2", None, status="refused"),
    put("d", "v6", "n3", None, status="unknown"),  # never happened: fine too
]
FINAL = {"a": reg("v2", 20, "n2"), "b": reg(None, 15, "n1", True), "c": reg("v4", 31, "n1")}


def test_a_consistent_history_passes() -> None:
    v = check({"n1": FINAL, "n2": dict(FINAL), "n3": dict(FINAL)}, HISTORY)
    assert v.ok, v.examples
    assert v.stores == 3 and v.keys == 3 and v.live == 2
    assert v.acknowledged == {"put": 3, "del": 1}
    assert v.unknown == {"put": 2}
    assert v.lines()[-1].startswith("verdict: PASS")


@pytest.mark.parametrize(
    ("final", "ops", "kind"),
    [
        ({**FINAL, "a": reg("v1", 10, "n1")}, HISTORY, "lost_write"),
        ({k: r for k, r in FINAL.items() if k != "a"}, HISTORY, "lost_write"),
        ({**FINAL, "b": reg("v3", 12, "n2")}, HISTORY, "resurrection"),
        ({**FINAL, "a": reg("other", 20, "n2")}, HISTORY, "stamp_reused"),
        ({**FINAL, "c": reg("v5", 40, "n2")}, HISTORY, "invented"),  # refused: never written
        ({**FINAL, "c": reg("v4", 31, "n2")}, HISTORY, "invented"),  # sent to n1, not n2
        ({**FINAL, "e": reg(None, 50, "n3", True)}, HISTORY, "invented"),
        (FINAL, [*HISTORY, put("x", "v9", "n2", 20)], "duplicate_stamp"),
    ],
)
def test_each_failure_is_named(final: dict[str, Any], ops: list[dict[str, Any]], kind: str) -> None:
    v = check({"n1": final, "n2": final}, ops)
    assert not v.ok and kind in v.problems, v.problems
    assert any(line.startswith(f"  {kind}: ") for line in v.lines())
    assert v.lines()[1].startswith("verdict: FAIL")


def test_diverged_stores_are_named_by_key() -> None:
    other = {**FINAL, "a": reg("v1", 10, "n1")}
    v = check({"n1": FINAL, "n2": FINAL, "n3": other}, HISTORY)
    assert v.problems["diverged"] == 1
    assert "key 'a'" in v.examples["diverged"][0] and "n3" in v.examples["diverged"][0]


def test_examples_are_capped_but_counts_are_complete() -> None:
    ops = [put(f"k{i}", f"v{i}", "n1", 100 + i) for i in range(30)]
    v = check({"n1": {}}, ops)
    assert v.problems["lost_write"] == 30 and len(v.examples["lost_write"]) == checker.MAX_EXAMPLES


def test_logs_and_dumps_are_read_from_files(tmp_path: Path) -> None:
    log = tmp_path / "writer-0.jsonl"
    log.write_text("".join(json.dumps(op) + "\n" for op in HISTORY) + '{"torn": ')
    assert read_logs([log]) == HISTORY
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(FINAL))
    assert read_dump(dump) == FINAL


def test_the_checker_imports_nothing_of_crdt_kv() -> None:
    """Independent of the store code by construction: a bug there cannot hide here."""
    tree = ast.parse(Path(checker.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "." * node.level)
    assert not any(m.startswith(("crdt_kv", ".")) for m in imported), imported
