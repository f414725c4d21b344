"""``crdt-kv status HOST:PORT``: a running node's peers from its ``/metrics``, as a health check.

Reads the node's Prometheus endpoint (:mod:`crdt_kv.net.metrics`) over HTTP, so it works
from any host that can scrape it and needs no access to the store. Prints a table of
peers and a verdict line (``--json``: one JSON document instead). Exit codes: 0 healthy,
1 unhealthy, 2 the endpoint could not be read or is not a crdt_kv node's.

What is judged, and why only that: peers the node dials, and peers with a session open
now. A peer that once dialed in and left (a client, a decommissioned node) is not the
node's problem, and is forgotten after the member expiry anyway. A judged peer is
unhealthy when it is unreachable (``crdt_kv_peer_up`` is 0: no session open and the last
attempt failed) or when it lags more than ``--max-lag-s`` seconds behind
(``crdt_kv_peer_lag_seconds``). Nodes that sync in rounds rather than live sessions are
idle between rounds, which is healthy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from crdt_kv.net.metrics import PEER_COUNTERS, PEER_GAUGES
from crdt_kv.net.peers import UNIDENTIFIED

__all__ = [
    "DEFAULT_MAX_LAG_S",
    "MAX_RESPONSE_BYTES",
    "PeerStatus",
    "Scrape",
    "StatusError",
    "StatusReport",
    "judge",
    "metrics_url",
    "parse_metrics",
    "read_metrics",
    "register",
]

DEFAULT_MAX_LAG_S = 60.0
MAX_RESPONSE_BYTES = 16 << 20
"""Longest metrics page read (a node with thousands of peers stays far below)."""

_FIELDS = {name: fld for fld, name, _ in (*PEER_GAUGES, *PEER_COUNTERS)}
"""Sample name -> :meth:`Node.stats` field."""


class StatusError(Exception):
    """The endpoint could not be read or parsed; the message says why (exit code 2)."""


@dataclass(slots=True)
class Scrape:
    """A node's metrics page, parsed: ``crdt_kv_node_info`` labels, per-peer values by
    :meth:`Node.stats` field, and the ``crdt_kv_store_*`` samples by name."""

    node: dict[str, str]
    peers: dict[str, dict[str, float]]
    store: dict[str, float]


@dataclass(slots=True)
class PeerStatus:
    """One peer's row, as the node's metrics tell it."""

    peer: str
    state: str = "-"
    lag_entries: int | None = None
    lag_seconds: float | None = None
    last_contact_age_s: float | None = None
    errors: int = 0
    protocol_errors: int = 0
    skew_refusals: int = 0
    judged: bool = False


@dataclass(slots=True)
class StatusReport:
    """What :func:`judge` found: the node's identity, its peers, and the problems."""

    url: str
    node: dict[str, str]
    peers: list[PeerStatus]
    store: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "problems": self.problems,
            "node": self.node,
            "store": self.store,
            "peers": [asdict(p) for p in self.peers],
        }


def metrics_url(target: str) -> str:
    """``HOST:PORT`` to ``http://HOST:PORT/metrics``; a full ``http(s)://`` URL is kept."""
    if target.startswith(("http://", "https://")):
        return target
    host, sep, port = target.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise StatusError(f"{target!r} is not HOST:PORT or an http:// URL")
    return f"http://{target}/metrics"


def read_metrics(url: str, *, timeout_s: float) -> str:
    """The text of the metrics page at ``url``; raises :class:`StatusError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body: bytes = resp.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise StatusError(f"cannot read {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise StatusError(f"cannot read {url}: {exc.reason}") from None
    except http.client.HTTPException as exc:  # its text may quote binary garbage
        why = f"not an HTTP answer ({type(exc).__name__})"
        raise StatusError(f"cannot read {url}: {why}") from None
    except (OSError, ValueError) as exc:
        raise StatusError(f"cannot read {url}: {exc or type(exc).__name__}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise StatusError(f"{url} answered more than {MAX_RESPONSE_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise StatusError(f"{url} did not answer UTF-8 text") from None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def parse_metrics(text: str, url: str) -> Scrape:
    """Parse a metrics page read from ``url``; raises :class:`StatusError`."""
    node: dict[str, str] | None = None
    peers: dict[str, dict[str, float]] = {}
    store: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "crdt_kv_node_info":
                    node = dict(s.labels)
                elif s.name in _FIELDS and "peer" in s.labels:
                    peers.setdefault(s.labels["peer"], {})[_FIELDS[s.name]] = s.value
                elif s.name.startswith("crdt_kv_store_"):
                    store[s.name] = s.value
    except (ValueError, TypeError, IndexError) as exc:
        raise StatusError(f"{url} did not answer Prometheus metrics: {exc}") from None
    if node is None:
        raise StatusError(f"{url} is not a crdt_kv node's metrics (no crdt_kv_node_info)")
    return Scrape(node, peers, store)


def _state(row: dict[str, float]) -> str:
    if row.get("live"):
        return "live"
    if row.get("connected"):
        return "connected"
    return "idle" if row.get("reachable") else "unreachable"


def judge(url: str, scrape: Scrape, *, max_lag_s: float, now: float) -> StatusReport:
    """A :class:`Scrape` to a report (``now``: Unix time); the rules are in the module
    docstring."""
    store = {k: _finite(v) for k, v in scrape.store.items()}
    report = StatusReport(url, scrape.node, [], store)
    for peer in sorted(scrape.peers):
        row = scrape.peers[peer]
        contact = row.get("last_contact")
        lag_s = row.get("lag_seconds")
        st = PeerStatus(
            peer,
            state="-" if peer == UNIDENTIFIED else _state(row),
            lag_entries=None if "lag_entries" not in row else int(row["lag_entries"]),
            lag_seconds=None if lag_s is None else _finite(lag_s),
            last_contact_age_s=None if contact is None else _finite(max(0.0, now - contact)),
            errors=int(row.get("errors", 0)),
            protocol_errors=int(row.get("protocol_errors", 0)),
            skew_refusals=int(row.get("skew_rejected", 0)),
            judged=peer != UNIDENTIFIED and bool(row.get("dialed") or row.get("connected")),
        )
        report.peers.append(st)
        if not st.judged:
            continue
        if st.state == "unreachable":
            report.problems.append(f"peer {peer} unreachable")
        elif st.lag_seconds is not None and st.lag_seconds > max_lag_s:
            report.problems.append(f"peer {peer} lags {st.lag_seconds:.1f} s > {max_lag_s:g} s")
    return report


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _print_table(report: StatusReport, console: Console) -> None:
    who = report.node.get("peer_id", "?")
    table = Table(title=f"node {who} (cluster {report.node.get('cluster_id', '?')})")
    for name in ("peer", "state", "lag entries", "lag s", "contact s ago", "errors"):
        table.add_column(name, justify="left" if name in ("peer", "state") else "right")
    for p in report.peers:
        table.add_row(
            p.peer,
            p.state if p.judged or p.state == "-" else f"{p.state} (not judged)",
            _fmt(p.lag_entries, "d"),
            _fmt(p.lag_seconds),
            _fmt(p.last_contact_age_s),
            str(p.errors),
        )
    console.print(table)


def _verdict(report: StatusReport) -> str:
    judged = sum(1 for p in report.peers if p.judged)
    if report.healthy:
        return f"verdict: HEALTHY ({judged} peer{'s' * (judged != 1)} judged)"
    return "verdict: UNHEALTHY: " + "; ".join(report.problems)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        url = metrics_url(args.target)
        scrape = parse_metrics(read_metrics(url, timeout_s=args.timeout), url)
    except StatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"healthy": False, "error": str(exc)}))
        return 2
    report = judge(url, scrape, max_lag_s=args.max_lag_s, now=time.time())
    if args.json:
        print(json.dumps(report.as_json(), allow_nan=False, ensure_ascii=False))
    else:
        _print_table(report, Console())
        print(_verdict(report))
    return 0 if report.healthy else 1


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand to the ``crdt-kv`` parser."""
    p = subparsers.add_parser(
        "status",
        help="show a running node's peers from its metrics endpoint (a health check)",
        description="Read http://HOST:PORT/metrics of a node started with metrics_listen, "
        "print its peers (state, lag, last contact, errors) and a verdict. Exit 0 healthy; "
        "1 when a peer it dials (or is connected to) is unreachable or lags more than "
        "--max-lag-s; 2 when the endpoint cannot be read.",
    )
    p.add_argument("target", metavar="HOST:PORT", help="the node's metrics address (or a URL)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--max-lag-s",
        type=_positive,
        default=DEFAULT_MAX_LAG_S,
        help=f"lag in seconds past which a peer is unhealthy (default {DEFAULT_MAX_LAG_S:g})",
    )
    p.add_argument(
        "--timeout", type=_positive, default=5.0, help="seconds to wait for the endpoint"
    )
    p.set_defaults(func=_cmd_status)
