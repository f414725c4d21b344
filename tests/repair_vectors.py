"""The JSON form of repair messages in spec/vectors/reconcile-messages.json."""

from __future__ import annotations

from typing import Any

from crdt_kv.repair.messages import Children, Entries, Items, Message, RepairHello, Round
from crdt_kv.version import RawEntry


def _entry_json(e: RawEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key_hex": e.key.hex(),
        "hlc_parts": [e.hlc >> 16, e.hlc & 0xFFFF],
        "peer": e.peer,
        "value_hex": None if e.deleted else e.value.hex(),
    }
    if e.context or e.others:
        out["context"] = [[p, [h >> 16, h & 0xFFFF]] for p, h in e.context]
        out["others"] = [_entry_json(o) for o in e.others]
    return out


def _entry(j: dict[str, Any], key: bytes | None = None) -> RawEntry:
    k = bytes.fromhex(j["key_hex"]) if key is None else key
    hlc = (j["hlc_parts"][0] << 16) | j["hlc_parts"][1]
    v = j["value_hex"]
    ctx = tuple((p, (w << 16) | lg) for p, (w, lg) in j.get("context", []))
    others = tuple(_entry(o, k) for o in j.get("others", []))
    return RawEntry(
        k, b"" if v is None else bytes.fromhex(v), hlc, j["peer"], v is None, 0, ctx, others
    )


def _range_json(r: Children | Items) -> dict[str, Any]:
    if isinstance(r, Children):
        return {
            "kind": "children",
            "level": r.level,
            "index": r.index,
            "sums": list(r.sums),
            "counts": list(r.counts),
        }
    return {
        "kind": "items",
        "level": r.level,
        "index": r.index,
        "keys_hex": [k.hex() for k in r.keys],
        "hashes": list(r.hashes),
    }


def _range(j: dict[str, Any]) -> Children | Items:
    if j["kind"] == "children":
        return Children(j["level"], j["index"], tuple(j["sums"]), tuple(j["counts"]))
    return Items(
        j["level"], j["index"], tuple(bytes.fromhex(k) for k in j["keys_hex"]), tuple(j["hashes"])
    )


def to_json(m: Message) -> tuple[str, dict[str, Any]]:
    """``(type, fields)`` of a message."""
    if isinstance(m, RepairHello):
        return "hello", {
            "version": m.version,
            "peer_id": m.peer_id,
            "conflicts": m.conflicts,
            "key_encoding": m.key_encoding,
            "value_encoding": m.value_encoding,
            "gc_horizon": m.gc_horizon,
            "digest_hex": m.digest.hex(),
            "count": m.count,
            "max_frame_bytes": m.max_frame_bytes,
            "top": _range_json(m.top),
        }
    if isinstance(m, Round):
        return "round", {
            "last": m.last,
            "ranges": [_range_json(r) for r in m.ranges],
            "missing_hex": [k.hex() for k in m.missing],
            "differing_hex": [k.hex() for k in m.differing],
        }
    return "entries", {"entries": [_entry_json(e) for e in m.entries]}


def from_json(kind: str, f: dict[str, Any]) -> Message:
    """The message a vector's ``type`` and ``fields`` describe."""
    if kind == "hello":
        top = _range(f["top"])
        assert isinstance(top, Children)
        return RepairHello(
            f["version"],
            f["peer_id"],
            f["conflicts"],
            f["key_encoding"],
            f["value_encoding"],
            f["gc_horizon"],
            bytes.fromhex(f["digest_hex"]),
            f["count"],
            f["max_frame_bytes"],
            top,
        )
    if kind == "round":
        return Round(
            f["last"],
            tuple(_range(r) for r in f["ranges"]),
            tuple(bytes.fromhex(k) for k in f["missing_hex"]),
            tuple(bytes.fromhex(k) for k in f["differing_hex"]),
        )
    return Entries(tuple(_entry(e) for e in f["entries"]))
