"""Helpers for the security tests: test certificates (cryptography package), token files, random pushes."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedrecon.server.auth import add_token


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(name: str = "fedrecon test CA") -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (PEM, and the key/cert objects to sign with)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
              server: bool) -> Pem:
    """A certificate signed by the CA: for a server (SAN localhost, 127.0.0.1) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_tokens(path: Path, clients: tuple[str, ...] = ("alice", "bob"), admins: tuple[str, ...] = ("root",)
                ) -> dict[str, str]:
    """A token file with a client token per name in `clients` and an admin token per name in `admins`."""
    tokens = {c: add_token(path, c, "client") for c in clients}
    tokens.update({a: add_token(path, a, "admin") for a in admins})
    return tokens


def random_push(rng: np.random.Generator, pool: int = 12, dim: int = 4, most: int = 5
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Random deltas over a shared pool of class ids: ids, counts in 1..9, float64 means."""
    n = int(rng.integers(1, most + 1))
    ids = [f"c{i}" for i in rng.choice(pool, size=n, replace=False)]
    return ids, rng.integers(1, 10, size=n), rng.normal(size=(n, dim))
