"""Certificates made at test time with `cryptography`: a CA, a server certificate for 127.0.0.1
and localhost, a client certificate, and a client certificate from a CA nobody trusts."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, san: list[x509.GeneralName] | None = None,
          usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki() -> dict[str, bytes]:
    ca_key, server_key, client_key, other_key = new_key(), new_key(), new_key(), new_key()
    ca = _cert("tfprod test CA", ca_key, None, ca_key, ca=True)
    server = _cert("localhost", server_key, ca, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = _cert("tfprod test client", client_key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca = _cert("someone else's CA", other_key, None, other_key, ca=True)
    stranger = _cert("stranger", client_key, other_ca, other_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return {"ca": pem(ca), "server_key": pem_key(server_key), "server_cert": pem(server),
            "client_key": pem_key(client_key), "client_cert": pem(client), "stranger_cert": pem(stranger)}


def write_key_pair(root: Any, name: str) -> tuple[str, str]:
    """A new EC key as `root/NAME.key` (PKCS8) and `root/NAME.pub` (SubjectPublicKeyInfo): paths."""
    key = new_key()
    (root / f"{name}.key").write_bytes(pem_key(key))
    (root / f"{name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(root / f"{name}.key"), str(root / f"{name}.pub")


def key_pairs(root: Any, *names: str) -> dict[str, str]:
    """write_key_pair for each name: {NAME: private key path, NAME.pub: public key path}."""
    paths = {}
    for name in names:
        paths[name], paths[f"{name}.pub"] = write_key_pair(root, name)
    return paths
