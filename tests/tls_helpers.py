"""Throwaway certificate authorities for TLS tests: a trustme CA that also issues
certificates naming a peer id in a URI SAN (trustme itself makes DNS/IP/e-mail SANs only)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crdt_kv.net.tls import PEER_URI_PREFIX, TlsConfig


class Pki:
    """One CA whose PEM files live in ``directory`` (``<name>.pem`` is the CA)."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca = trustme.CA()
        self.ca_path = directory / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))

    def issue(
        self, file: str, *, uris: Sequence[str] = (), cn: str | None = None
    ) -> tuple[Path, Path]:
        """A leaf certificate and key signed by this CA: URI SANs ``uris``, common name
        ``cn`` (either may be absent). Returns ``(cert path, key path)``."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if uris:
            san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
            builder = builder.add_extension(san, critical=cn is None)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{file}.pem", self.dir / f"{file}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def tls(
        self,
        peer_id: str,
        *,
        allowed: Iterable[str] | None = None,
        trust: Pki | None = None,
        cn: bool = False,
    ) -> TlsConfig:
        """A node's TLS naming ``peer_id`` (in a URI SAN, or the CN if ``cn``), trusting
        ``trust``'s CA (default this one)."""
        if cn:
            cert, key = self.issue(f"{self.name}-{peer_id}", cn=peer_id)
        else:
            cert, key = self.issue(f"{self.name}-{peer_id}", uris=[PEER_URI_PREFIX + peer_id])
        ca = (trust or self).ca_path
        return TlsConfig(
            cert=cert,
            key=key,
            ca=ca,
            allowed_peers=None if allowed is None else frozenset(allowed),
        )
