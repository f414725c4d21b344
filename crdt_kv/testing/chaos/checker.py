"""The chaos run's verdict, from the stores' dumps and the writers' logs alone.

Independent of the store code on purpose: it imports nothing of crdt_kv and knows only
what the documentation promises (last-writer-wins by stamp, a stamp being ``(hlc, peer)``
ordered by hlc, then peer id), so a bug in the store's merge cannot hide itself here.

A **dump** maps each key to its register as a store holds it: ``{"value", "hlc",
"peer", "deleted"}`` (tombstones included). A **writer log** has one record per
operation: ``node`` (the peer id it was sent to), ``op`` (``put`` or ``del``), ``key``,
``value`` (puts), ``status`` and, when ``status`` is ``ok``, the acknowledged ``hlc`` and
``peer``. ``unknown`` means the connection was lost before the answer (the write may or
may not have happened); anything else (refused, never sent) did not happen.

The checks:

1. **converged**: every dump is equal;
2. **no lost write**: every acknowledged write is in the final state or superseded by a
   greater stamp; an equal stamp must carry the same write;
3. **no resurrection**: no key acknowledged deleted at stamp ``s`` holds a live value
   stamped below ``s`` (a special case of 2, counted apart because it is the classic
   failure of deletes);
4. **no invention**: every final register comes from an operation that may have happened:
   an acknowledged one with that stamp, or an ``unknown`` one with that value sent to the
   peer that stamped it;
5. **unique stamps**: no two acknowledged writes share a stamp.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Verdict", "check", "read_dump", "read_logs"]

Register = Mapping[str, Any]
Dump = Mapping[str, Register]

MAX_EXAMPLES = 10
"""Problems listed per check (the counts are always complete)."""


@dataclass
class Verdict:
    """What the checks found: ``ok`` when nothing; ``problems`` counts each kind and
    ``examples`` describes up to :data:`MAX_EXAMPLES` of each."""

    stores: int = 0
    keys: int = 0
    live: int = 0
    acknowledged: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def flag(self, kind: str, text: str) -> None:
        self.problems[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(text)

    def lines(self) -> list[str]:
        """The verdict as report lines."""
        out = [
            f"checked {self.stores} stores, {self.keys} keys ({self.live} live) against "
            f"{sum(self.acknowledged.values())} acknowledged operations "
            f"({_counts(self.acknowledged)}) and {sum(self.unknown.values())} unknown "
            f"({_counts(self.unknown)})"
        ]
        if self.ok:
            out.append(
                "verdict: PASS (converged, no lost write, no resurrection, "
                "no invented value, unique stamps)"
            )
            return out
        out.append(f"verdict: FAIL ({_counts(self.problems)})")
        for kind, texts in sorted(self.examples.items()):
            out.extend(f"  {kind}: {t}" for t in texts)
        return out


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(c.items())) or "none"


def _stamp(r: Mapping[str, Any]) -> tuple[int, str]:
    return int(r["hlc"]), str(r["peer"])


def read_dump(path: Path) -> dict[str, dict[str, Any]]:
    """A dump written as one JSON object."""
    data: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def read_logs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every record of the JSON-lines writer logs (a torn last line is skipped: the writer
    was stopped mid-write, and an operation it never logged was never acknowledged)."""
    out: list[dict[str, Any]] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def check(dumps: Mapping[str, Dump], ops: Iterable[Mapping[str, Any]]) -> Verdict:
    """Run every check; ``dumps`` maps a store's name to its dump."""
    v = Verdict(stores=len(dumps))
    names = sorted(dumps)
    if not names:
        v.flag("no_stores", "nothing to check")
        return v
    final = dumps[names[0]]
    _check_equal(v, dumps, names)
    v.keys = len(final)
    v.live = sum(1 for r in final.values() if not r["deleted"])
    acked: dict[tuple[int, str], Mapping[str, Any]] = {}
    maybe: set[tuple[str, str, bool, str]] = set()
    for op in ops:
        if op["status"] == "ok":
            v.acknowledged[op["op"]] += 1
            _check_acked(v, final, op)
            stamp = _stamp(op)
            if stamp in acked:
                v.flag(
                    "duplicate_stamp", f"{stamp} acknowledged for {_op(acked[stamp])} and {_op(op)}"
                )
            acked[stamp] = op
        elif op["status"] == "unknown":
            v.unknown[op["op"]] += 1
            value = json.dumps(op.get("value"))
            maybe.add((op["key"], op["node"], op["op"] == "del", value))
    for key, r in sorted(final.items()):
        _check_origin(v, key, r, acked, maybe)
    return v


def _check_equal(v: Verdict, dumps: Mapping[str, Dump], names: list[str]) -> None:
    first = dumps[names[0]]
    for name in names[1:]:
        other = dumps[name]
        for key in sorted(set(first) | set(other)):
            a, b = first.get(key), other.get(key)
            if a != b:
                v.flag("diverged", f"key {key!r}: {names[0]} has {a}, {name} has {b}")


def _op(op: Mapping[str, Any]) -> str:
    what = "del" if op["op"] == "del" else f"put {op.get('value')!r}"
    return f"{what} of {op['key']!r} on {op['node']}"


def _check_acked(v: Verdict, final: Dump, op: Mapping[str, Any]) -> None:
    r = final.get(op["key"])
    stamp = _stamp(op)
    deleted = op["op"] == "del"
    if r is None:
        v.flag("lost_write", f"{_op(op)} acknowledged at {stamp}: the key is absent")
        return
    have = _stamp(r)
    if have > stamp:
        return
    if have == stamp:
        if r["deleted"] != deleted or (not deleted and r["value"] != op.get("value")):
            v.flag("stamp_reused", f"{_op(op)} acknowledged at {stamp}; the store holds {r}")
        return
    if deleted and not r["deleted"]:
        v.flag(
            "resurrection",
            f"{_op(op)} acknowledged at {stamp}; the key is live again "
            f"with {r['value']!r} at {have}",
        )
    else:
        v.flag("lost_write", f"{_op(op)} acknowledged at {stamp}; the store holds the older {r}")


def _check_origin(
    v: Verdict,
    key: str,
    r: Register,
    acked: Mapping[tuple[int, str], Mapping[str, Any]],
    maybe: set[tuple[str, str, bool, str]],
) -> None:
    deleted = bool(r["deleted"])
    op = acked.get(_stamp(r))
    same_op = op is not None and op["key"] == key and (op["op"] == "del") == deleted
    if same_op and op is not None and (deleted or op.get("value") == r["value"]):
        return
    value = json.dumps(None if deleted else r["value"])
    if (key, str(r["peer"]), deleted, value) in maybe:
        return
    v.flag("invented", f"key {key!r} holds {r}, which no logged operation wrote")
