"""Mutual TLS and peer ids bound to certificates (crdt_kv/net/tls.py): which certificate
names which peer, config validation, and nodes on 127.0.0.1 that sync with valid
certificates and refuse, count and report everything else."""

from __future__ import annotations

import contextlib
import json
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from net_helpers import RawPeer, addr, hello_for, wait_until
from prometheus_client.exposition import generate_latest
from tls_helpers import Pki

import crdt_kv
from crdt_kv import ConfigError, Node, PeerIdentityError, Store, TlsConfig
from crdt_kv.net import UNIDENTIFIED, ErrorEvent
from crdt_kv.net.metrics import metrics_registry
from crdt_kv.net.tls import PEER_URI_PREFIX, certificate_identity

FAST: dict[str, Any] = {
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.2,
    "rng": random.Random(7),
    "sync_interval_s": 30,
}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def mem() -> Iterator[Any]:
    opened: list[Store] = []

    def make(peer: str) -> Store:
        s = crdt_kv.open(backend="memory", peer_id=peer)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@contextlib.asynccontextmanager
async def node(store: Store, tls: TlsConfig | None, *peers: str, **kw: Any) -> AsyncIterator[Node]:
    async with crdt_kv.serve(
        store, listen="127.0.0.1:0", peers=peers, tls=tls, **{**FAST, **kw}
    ) as n:
        yield n


def errors_of(n: Node) -> list[ErrorEvent]:
    seen: list[ErrorEvent] = []
    n.on("error", seen.append)
    return seen


def last_error(n: Node, peer: str) -> str:
    return str(n.stats().get(peer, {}).get("last_error") or "")


def refusals(events: list[ErrorEvent], reason: str) -> list[PeerIdentityError]:
    return [
        e.error
        for e in events
        if isinstance(e.error, PeerIdentityError) and e.error.reason == reason
    ]


# --- which peer a certificate names ------------------------------------------------------


def _san(*uris: str) -> tuple[tuple[str, str], ...]:
    return tuple(("URI", u) for u in uris)


@pytest.mark.parametrize(
    ("cert", "want"),
    [
        ({"subjectAltName": _san(PEER_URI_PREFIX + "node-a")}, "node-a"),
        ({"subjectAltName": _san(PEER_URI_PREFIX + "caf%C3%A9%2F1")}, "café/1"),
        (
            {
                "subjectAltName": (("DNS", "x"), *_san("https://x/", PEER_URI_PREFIX + "a")),
                "subject": ((("commonName", "cn"),),),
            },
            "a",
        ),
        ({"subject": ((("organizationName", "o"),), (("commonName", "b"),))}, "b"),
        (
            {"subjectAltName": _san("spiffe://x/y"), "subject": ((("commonName", "c"),),)},
            "c",
        ),
        ({"subjectAltName": _san(PEER_URI_PREFIX + "a", PEER_URI_PREFIX + "b")}, None),
        (
            {"subjectAltName": _san(PEER_URI_PREFIX), "subject": ((("commonName", "c"),),)},
            None,
        ),
        ({"subjectAltName": _san(PEER_URI_PREFIX + "%FF")}, None),
        ({"subject": ((("commonName", "a"),), (("commonName", "b"),))}, None),
        ({"subject": ((("commonName", ""),),)}, None),
        ({"subjectAltName": (("IP Address", "127.0.0.1"),)}, None),
        ({}, None),
    ],
    ids=[
        "uri",
        "uri-percent-decoded",
        "uri-among-others-beats-cn",
        "cn",
        "foreign-uri-falls-back-to-cn",
        "two-peer-uris",
        "empty-uri-no-fallback",
        "uri-not-utf8",
        "two-cns",
        "empty-cn",
        "ip-only",
        "nothing",
    ],
)
def test_certificate_identity(cert: dict[str, Any], want: str | None) -> None:
    assert certificate_identity(cert) == want


# --- configuration ---------------------------------------------------------------------


def test_tls_config_resolves_paths_and_builds_contexts(pki: Pki) -> None:
    cert, key = pki.issue("a", uris=[PEER_URI_PREFIX + "a"])
    tls = TlsConfig(cert=cert, key=key, ca=pki.ca_path, allowed_peers=frozenset(["b"]))
    assert tls.cert == str(cert) and tls.allowed_peers == {"b"}
    table = {"cert": str(cert), "key": str(key), "ca": str(pki.ca_path), "allowed_peers": ["b"]}
    assert TlsConfig.from_table(table) == tls


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_missing_tls_file_is_a_config_error_naming_it(pki: Pki, which: str) -> None:
    cert, key = pki.issue("a", cn="a")
    files = {"cert": cert, "key": key, "ca": pki.ca_path}
    files[which] = pki.dir / "nope.pem"
    with pytest.raises(ConfigError, match=rf"tls\.{which} file '.*nope\.pem' does not exist"):
        TlsConfig(**files)  # type: ignore[arg-type]


@pytest.mark.parametrize("allowed", ["a", ["a", 1], ["a", ""], 5])
def test_allowed_peers_must_be_a_list_of_peer_ids(pki: Pki, allowed: Any) -> None:
    cert, key = pki.issue("a", cn="a")
    with pytest.raises(ConfigError, match="allowed_peers"):
        TlsConfig(cert=cert, key=key, ca=pki.ca_path, allowed_peers=allowed)


def test_unusable_tls_files_are_config_errors(pki: Pki) -> None:
    cert, key = pki.issue("a", cn="a")
    _, other_key = pki.issue("b", cn="b")
    with pytest.raises(ConfigError, match=r"with key .*b\.key.*mismatch"):
        TlsConfig(cert=cert, key=other_key, ca=pki.ca_path)
    with pytest.raises(ConfigError, match=r"cannot load TLS CA file .*a\.key"):
        TlsConfig(cert=cert, key=key, ca=key)
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted = pki.dir / "enc.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match=r"enc\.key' is encrypted"):
        TlsConfig(cert=cert, key=encrypted, ca=pki.ca_path)
    with pytest.raises(ConfigError, match="missing: key, ca"):
        TlsConfig.from_table({"cert": str(cert)})


async def test_serve_takes_tls_or_wrap_stream_not_both(pki: Pki, mem: Any) -> None:
    with pytest.raises(ConfigError, match="tls or wrap_stream"):
        async with crdt_kv.serve(mem("a"), tls=pki.tls("a"), wrap_stream=lambda s, o: s):
            pass  # pragma: no cover


# --- nodes -------------------------------------------------------------------------------


async def test_nodes_with_valid_certificates_sync(pki: Pki, mem: Any) -> None:
    a, b = mem("a"), mem("b")
    a.put("from-a", 1)
    b.put("from-b", 2)
    tls_b = pki.tls("b", cn=True, allowed=["a"])  # identity in the common name
    with trio.fail_after(20):
        tls_a = pki.tls("a", allowed=["b"])  # in a URI SAN
        async with node(b, tls_b) as nb, node(a, tls_a, addr(nb)) as na:
            await wait_until(lambda: a.get("from-b") == 2 and b.get("from-a") == 1)
            await wait_until(lambda: na.stats()["b"]["live"], what="live over TLS")
            a.put("live", 3)
            await wait_until(lambda: b.get("live") == 3, what="live push over TLS")
            assert await na.sync_now() == {addr(nb): None}
            for n in (na, nb):
                assert not n.peer_book.refusals and UNIDENTIFIED not in n.stats()
            assert nb.stats()["a"]["errors"] == 0


@pytest.mark.parametrize("side", ["client-cert-from-another-ca", "client-trusts-another-ca"])
async def test_certificate_from_another_ca_is_refused(
    pki: Pki, tmp_path: Path, mem: Any, side: str
) -> None:
    other = Pki(tmp_path / "other", name="other")
    b, c = mem("b"), mem("c")
    c.put("k", 1)
    if side == "client-cert-from-another-ca":
        tls_c = other.tls("c", trust=pki)  # c trusts b, b does not trust c
    else:
        tls_c = pki.tls("c", trust=other)  # c's certificate is fine, it distrusts b's
    with trio.fail_after(20):
        async with node(b, pki.tls("b")) as nb:
            seen_b = errors_of(nb)
            async with node(c, tls_c, addr(nb)) as nc:
                seen_c = errors_of(nc)
                if side == "client-cert-from-another-ca":
                    await wait_until(lambda: nb.peer_book.refusals["tls_handshake"] >= 1)
                    row = nb.stats()[UNIDENTIFIED]
                    assert row["errors"] >= 1 and "TLS handshake" in row["last_error"]
                    [err, *_] = refusals(seen_b, "tls_handshake")
                    assert "certificate" in str(err).lower()
                else:
                    await wait_until(lambda: nc.peer_book.refusals["tls_handshake"] >= 1)
                    [err, *_] = refusals(seen_c, "tls_handshake")
                    assert "certificate verify failed" in str(err).lower()
                    assert "TLS handshake" in nc.stats()[addr(nb)]["last_error"]
                assert "c" not in nb.stats() and "b" not in nc.stats()
    assert "k" not in b


async def test_valid_certificate_claiming_another_peer_id_is_refused(pki: Pki, mem: Any) -> None:
    b, mallory = mem("b"), mem("mallory")
    mallory.put("forged", 1)
    b.put("secret", 2)
    with trio.fail_after(20):
        async with node(b, pki.tls("b")) as nb:
            seen = errors_of(nb)
            # mallory holds a valid certificate of "a" but its Hello says "mallory".
            async with node(mallory, pki.tls("a"), addr(nb)) as nm:
                await wait_until(lambda: nb.peer_book.refusals["identity_mismatch"] >= 2)
                [err, *_] = refusals(seen, "identity_mismatch")
                assert "certificate of 'a' claims to be 'mallory'" in str(err)
                row = nb.stats()["a"]  # booked under the identity the certificate proved
                assert row["errors"] >= 2 and row["sessions"] == 0
                assert "mallory" not in nb.stats()
                await wait_until(lambda: "code 7" in last_error(nm, "b"), what="told why")
    assert "forged" not in b and "secret" not in mallory


async def test_peer_off_allowed_peers_is_refused(pki: Pki, mem: Any) -> None:
    a, b, c = mem("a"), mem("b"), mem("c")
    c.put("k", 1)
    with trio.fail_after(20):
        async with node(b, pki.tls("b", allowed=["a"])) as nb:
            seen = errors_of(nb)
            async with node(a, pki.tls("a"), addr(nb)), node(c, pki.tls("c"), addr(nb)) as nc:
                await wait_until(lambda: nb.peer_book.refusals["not_allowed"] >= 1)
                await wait_until(lambda: nb.stats().get("a", {}).get("connected", False))
                [err, *_] = refusals(seen, "not_allowed")
                assert err.peer_id == "c" and "'c' is not in allowed_peers" in str(err)
                assert nb.stats()["c"]["errors"] >= 1 and nb.stats()["c"]["sessions"] == 0
                await wait_until(lambda: "code 7" in last_error(nc, "b"), what="c told why")
    assert "k" not in b and "k" not in a


async def test_plaintext_client_on_a_tls_port_is_refused(pki: Pki, mem: Any) -> None:
    b = mem("b")
    with trio.fail_after(20):
        async with node(b, pki.tls("b"), metrics_listen="127.0.0.1:0") as nb:
            seen = errors_of(nb)
            plain = await trio.open_tcp_stream(*nb.address)
            await RawPeer(plain).send(hello_for("plain", hlc=b.hlc.now()))
            with contextlib.suppress(trio.BrokenResourceError):
                while await plain.receive_some():
                    pass  # a TLS alert at most, then the node hangs up
            await plain.aclose()
            await wait_until(lambda: nb.peer_book.refusals["tls_handshake"] == 1)
            [err] = refusals(seen, "tls_handshake")
            assert "TLS handshake with 127.0.0.1:" in str(err)
            assert isinstance(err, PeerIdentityError) and err.fault  # an offence
            assert seen[0].peer_id is None and not seen[0].outbound
            assert nb.stats()[UNIDENTIFIED]["errors"] == 1 and "plain" not in nb.stats()
            text = generate_latest(metrics_registry(nb)).decode()
            assert 'crdt_kv_node_peer_refusals_total{reason="tls_handshake"} 1.0' in text


async def test_a_connection_closed_mid_handshake_is_refused_but_no_offence(
    pki: Pki, mem: Any
) -> None:
    """A health check connects and hangs up; a slow node's handshake times out: neither
    proves anything against the host, so neither counts toward its penalty."""
    b = mem("b")
    with trio.fail_after(20):
        async with node(b, pki.tls("b")) as nb:
            seen = errors_of(nb)
            for _ in range(4):
                plain = await trio.open_tcp_stream(*nb.address)
                await plain.aclose()
            await wait_until(lambda: nb.peer_book.refusals["tls_handshake"] == 4)
            assert all(not e.fault for e in refusals(seen, "tls_handshake"))
            assert len(nb.penalties) == 0  # no host has an offence on record


async def test_tls_node_refuses_to_dial_a_plaintext_node(pki: Pki, mem: Any) -> None:
    a, b = mem("a"), mem("b")
    b.put("k", 1)
    with trio.fail_after(20):
        tls_a = pki.tls("a")
        async with (
            node(b, None, handshake_timeout_s=0.5) as nb,
            node(a, tls_a, addr(nb), connect_timeout_s=1) as na,
        ):
            await wait_until(lambda: na.peer_book.refusals["tls_handshake"] >= 1)
            assert "TLS handshake" in na.stats()[addr(nb)]["last_error"]
    assert "k" not in a


async def test_certificate_naming_no_peer_is_refused(pki: Pki, mem: Any) -> None:
    a, b = mem("a"), mem("b")
    leaf = pki.ca.issue_cert("127.0.0.1")  # an IP SAN, no common name: names no peer
    combined = pki.dir / "anon.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(combined))
    anon = TlsConfig(cert=combined, key=combined, ca=pki.ca_path)
    with trio.fail_after(20):
        async with node(b, pki.tls("b")) as nb:
            seen = errors_of(nb)
            async with node(a, anon, addr(nb)):
                await wait_until(lambda: nb.peer_book.refusals["no_identity"] >= 1)
                [err, *_] = refusals(seen, "no_identity")
                assert "names no peer id" in str(err)


def test_contexts_require_client_certificates(pki: Pki) -> None:
    server, client = pki.tls("a")._contexts
    for ctx in (server, client):
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_identity_vectors_of_the_spec() -> None:
    """spec/vectors/tls-identity.json: the rule of protocol.md section 11.1, case by case."""
    path = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "tls-identity.json"
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 10
    for case in cases:
        sans = [("URI", u) for u in case["uris"]] + [tuple(o) for o in case["other_sans"]]
        subject = [(("organizationName", "crdt-kv test"),)]
        subject += [(("commonName", cn),) for cn in case["common_names"]]
        cert = {"subjectAltName": tuple(sans), "subject": tuple(subject)}
        assert certificate_identity(cert) == case["peer_id"], case["name"]
