"""Threshold-signed X.509: real FROST signatures, checked by cryptography, openssl and ssl."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from dpkid.client.x509 import to_x509
from dpkid.core import codec, frost
from dpkid.core.crypto import sha256
from dpkid.core.domains import validate_domain
from dpkid.core.keys import SigningKey, spki_der_of
from dpkid.core.tss import x509 as tss
from dpkid.core.types import Certificate, OrgIdentity
from dpkid.dev import x509_vectors

CHAIN = "dpkid-testnet"
DAY_MS = 86_400_000
NOW_S = int(time.time())
OPENSSL = shutil.which("openssl")
VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "x509-tss.json"

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")

ORG = OrgIdentity(
    name="Example Corp",
    country="US",
    state="California",
    locality="San Francisco",
    registration_id="C0806592",
    jurisdiction="US-CA",
)


# --------------------------------------------------------------------------- FROST


@dataclass(frozen=True)
class Group:
    shares: dict[int, int]
    public_key: frost.Element


def make_group(label: str) -> Group:
    """A 2-of-3 group key from a trusted dealer with fixed secrets."""

    def scalar(tag: str) -> int:
        return frost.random_scalar(hashlib.sha512(f"{label}/{tag}".encode()).digest())

    shares, group_pk, vss = frost.trusted_dealer_keygen(scalar("secret"), [scalar("c1")], 3, 2)
    assert all(frost.vss_verify(share, vss) for share in shares)
    return Group(dict(shares), group_pk)


def threshold_sign(group: Group, msg: bytes, signers: Sequence[int] = (1, 3)) -> bytes:
    """Round one (commit), round two (sign) by two of the three, then aggregate."""
    nonces: dict[int, frost.SigningNonces] = {}
    commitments: list[frost.SigningCommitment] = []
    for i in sorted(signers):
        nonces[i], comm = frost.commit(
            i, group.shares[i], os.urandom(32), os.urandom(32)
        )  # fresh nonces, as a validator would draw them
        commitments.append(comm)
    shares = {
        i: frost.sign(i, group.shares[i], group.public_key, nonces[i], msg, commitments)
        for i in sorted(signers)
    }
    sig = frost.aggregate(commitments, msg, group.public_key, shares)
    assert frost.verify_signature(group.public_key, msg, sig)
    return sig


GROUP = make_group("dpkid-test/group")
OTHER_GROUP = make_group("dpkid-test/other-group")


# --------------------------------------------------------------------------- records


def ed_key(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(sha256(b"key/" + label.encode()))


def p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(
        int.from_bytes(sha256(b"p256/" + label.encode()), "big") % 2**255, ec.SECP256R1()
    )


_RSA: list[rsa.RSAPrivateKey] = []


def rsa_key() -> rsa.RSAPrivateKey:
    if not _RSA:
        _RSA.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA[0]


KEYS: dict[str, Callable[[], SigningKey]] = {
    "ed25519": lambda: ed_key("leaf"),
    "p256": lambda: p256_key("leaf"),
    "rsa": rsa_key,
}


def record(
    cert_type: str,
    key: SigningKey,
    domains: Sequence[str] = ("tls.example.test", "*.tls.example.test"),
    org: OrgIdentity | None = None,
    label: str = "leaf",
    issued_type: str | None = None,
    not_before_ms: int | None = None,
) -> Certificate:
    start = (NOW_S - 3600) * 1000 + 123 if not_before_ms is None else not_before_ms
    if org is None and cert_type in ("OV", "EV"):
        org = ORG
    return Certificate(
        cert_id=sha256(b"cert/" + label.encode()),
        app_id=sha256(b"app/" + label.encode()),
        owner=bytes(20),
        cert_type=cert_type,
        issued_type=issued_type or cert_type,
        domains=list(domains),
        spki=spki_der_of(key),
        org=org,
        not_before_ms=start,
        not_after_ms=start + 30 * DAY_MS,
        issued_height=12,
        endorsers=[],
        attestors=[bytes(20)],
        dv_power=1,
        total_power=1,
        log_index=3,
    )


def root_der(group: Group = GROUP, chain_id: str = CHAIN) -> bytes:
    tbs = tss.root_tbs(chain_id, group.public_key, NOW_S - 86_400)
    return tss.assemble(tbs, threshold_sign(group, tbs))


def leaf_der(cert: Certificate, group: Group = GROUP, version: int = 0) -> bytes:
    tbs = tss.leaf_tbs(cert, CHAIN, version, group.public_key)
    return tss.assemble(tbs, threshold_sign(group, tbs))


ROOT_DER = root_der()


def write(path: Path, der: bytes, label: str = "CERTIFICATE") -> Path:
    path.write_bytes(tss.pem(der, label))
    return path


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30, check=False)


def openssl_verify(tmp: Path, leaf: bytes, *extra: str, root: bytes = ROOT_DER) -> str:
    """openssl verify against only the root; returns the output, asserts nothing."""
    ca, leaf_pem = write(tmp / "root.pem", root), write(tmp / "leaf.pem", leaf)
    r = openssl("verify", *extra, "-CAfile", str(ca), str(leaf_pem))
    return f"rc={r.returncode}\n{r.stdout}{r.stderr}"


def ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(oid)


# --------------------------------------------------------------------------- root and leaves


def test_root_is_a_self_signed_ca_for_the_group_key() -> None:
    root = x509.load_der_x509_certificate(ROOT_DER)
    gpk = ed25519.Ed25519PublicKey.from_public_bytes(GROUP.public_key)
    gpk.verify(root.signature, root.tbs_certificate_bytes)  # raises if not
    root.verify_directly_issued_by(root)
    assert root.public_key() == gpk
    assert root.subject == root.issuer == tss.root_name(CHAIN)
    assert root.subject.rfc4514_string() == "CN=dpkid root dpkid-testnet,O=dpkid ledger"
    assert root.version == x509.Version.v3
    serial = int.from_bytes(sha256(b"dpkid/root/v1\x00" + GROUP.public_key)[:16], "big") >> 1
    assert root.serial_number == serial == tss.root_serial(GROUP.public_key)
    assert root.not_valid_before_utc.timestamp() == NOW_S - 86_400
    assert root.not_valid_after_utc.isoformat() == "9999-12-31T23:59:59+00:00"
    assert [e.oid for e in root.extensions] == [
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        tss.OID_LEDGER_REF,
    ]
    bc = ext(root, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=None)
    ku = ext(root, ExtensionOID.KEY_USAGE)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = ext(root, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert ski.digest == tss.key_id(GROUP.public_key) == sha256(GROUP.public_key)[:20]
    marker = ext(root, tss.OID_LEDGER_REF)
    assert not marker.critical
    assert isinstance(marker.value, x509.UnrecognizedExtension)
    text = b"dpkid:dpkid-testnet:root"
    assert marker.value.value == bytes([0x0C, len(text)]) + text  # one DER UTF8String
    assert tss.ED25519.spki(GROUP.public_key) == root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("key_name", ["ed25519", "p256", "rsa"])
@pytest.mark.parametrize("cert_type", ["DV", "OV", "EV"])
def test_leaf_is_issued_by_the_root_and_carries_the_record(cert_type: str, key_name: str) -> None:
    key = KEYS[key_name]()
    cert = record(cert_type, key, label=f"{cert_type}-{key_name}")
    leaf = x509.load_der_x509_certificate(leaf_der(cert))
    root = x509.load_der_x509_certificate(ROOT_DER)
    leaf.verify_directly_issued_by(root)  # the group key's signature, checked by cryptography
    assert leaf.issuer == root.subject
    assert leaf.serial_number == int.from_bytes(cert.cert_id[:16], "big") >> 1
    assert spki_der_of(leaf.public_key()) == cert.spki
    assert leaf.not_valid_before_utc.timestamp() == cert.not_before_ms // 1000
    assert leaf.not_valid_after_utc.timestamp() == cert.not_after_ms // 1000
    assert [e.oid for e in leaf.extensions] == [
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.CERTIFICATE_POLICIES,
        tss.OID_LEDGER_REF,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ]
    san = ext(leaf, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert not san.critical  # the subject has a CN
    assert isinstance(san.value, x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == cert.domains
    ku = ext(leaf, ExtensionOID.KEY_USAGE)
    assert ku.critical and isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment == (key_name == "rsa")
    eku = ext(leaf, ExtensionOID.EXTENDED_KEY_USAGE).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = ext(leaf, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == tss.key_id(GROUP.public_key)
    policies = ext(leaf, ExtensionOID.CERTIFICATE_POLICIES).value
    assert isinstance(policies, x509.CertificatePolicies)
    assert [p.policy_identifier for p in policies] == [
        tss.OID_CABF_TYPE[cert_type],
        tss.OID_DPKID_TYPE[cert_type],
    ]
    ref = ext(leaf, tss.OID_LEDGER_REF).value
    assert isinstance(ref, x509.UnrecognizedExtension)
    assert ref.value[2:].decode() == f"dpkid:{CHAIN}:12:{cert.cert_id.hex()}:3"
    subject = {a.oid: a.value for a in leaf.subject}
    assert subject[NameOID.COMMON_NAME] == "tls.example.test"
    if cert_type == "DV":
        assert list(subject) == [NameOID.COMMON_NAME]
    else:
        assert subject[NameOID.ORGANIZATION_NAME] == "Example Corp"
        assert subject[NameOID.COUNTRY_NAME] == "US"
    if cert_type == "EV":
        assert subject[NameOID.SERIAL_NUMBER] == "C0806592"
        assert subject[tss.OID_JURISDICTION_COUNTRY] == "US"
    # The same record, signed by the old exporter, has the same serial (SPEC §14.2).
    assert to_x509(cert, CHAIN, 12).serial_number == leaf.serial_number


def test_a_degraded_certificate_is_signed_as_dv() -> None:
    cert = record("DV", ed_key("degraded"), label="degraded", issued_type="EV")
    leaf = x509.load_der_x509_certificate(leaf_der(cert, version=1))
    policies = ext(leaf, ExtensionOID.CERTIFICATE_POLICIES).value
    assert isinstance(policies, x509.CertificatePolicies)
    assert [p.policy_identifier for p in policies] == [
        tss.OID_CABF_TYPE["DV"],
        tss.OID_DPKID_TYPE["DV"],
    ]
    assert [a.oid for a in leaf.subject] == [NameOID.COMMON_NAME]
    # A re-signed version has its own serial, so a CRL can revoke the old one alone.
    assert leaf.serial_number == tss.leaf_serial(cert.cert_id, 1)
    assert leaf.serial_number != tss.leaf_serial(cert.cert_id, 0)


def test_serial_rules() -> None:
    cid = bytes(range(32))
    assert tss.leaf_serial(cid, 0) == int.from_bytes(cid[:16], "big") >> 1
    assert (
        tss.leaf_serial(cid, 7)
        == int.from_bytes(sha256(cid + (7).to_bytes(4, "big"))[:16], "big") >> 1
    )
    assert tss.leaf_serial(bytes(32), 0) == 1  # never zero
    assert len({tss.leaf_serial(cid, v) for v in range(50)}) == 50
    assert all(0 < tss.leaf_serial(sha256(bytes([v])), v) < 2**127 for v in range(50))


@needs_openssl
@pytest.mark.parametrize(
    ("cert_type", "key_name"), [("DV", "ed25519"), ("OV", "p256"), ("EV", "ed25519"), ("EV", "rsa")]
)
def test_openssl_verifies_the_leaf_against_the_root(
    tmp_path: Path, cert_type: str, key_name: str
) -> None:
    leaf = leaf_der(record(cert_type, KEYS[key_name](), label=f"ossl-{cert_type}"))
    out = openssl_verify(tmp_path, leaf)
    assert out.startswith("rc=0") and "leaf.pem: OK" in out, out
    # X509_STRICT (the default of Python 3.13's ssl) accepts it too.
    out = openssl_verify(tmp_path, leaf, "-x509_strict", "-purpose", "sslserver")
    assert out.startswith("rc=0") and "leaf.pem: OK" in out, out
    out = openssl_verify(tmp_path, leaf, "-purpose", "sslclient")
    assert out.startswith("rc=0"), out


@needs_openssl
def test_openssl_rejects_a_leaf_signed_by_another_group_key(tmp_path: Path) -> None:
    leaf = leaf_der(record("DV", ed_key("x"), label="other"), group=OTHER_GROUP)
    out = openssl_verify(tmp_path, leaf)
    assert not out.startswith("rc=0"), out
    # Its authorityKeyIdentifier names another key, so the trusted root is not its issuer.
    assert "unable to get local issuer certificate" in out, out
    # And it verifies against its own root, which is not the one the client trusts.
    out = openssl_verify(tmp_path, leaf, root=root_der(OTHER_GROUP))
    assert out.startswith("rc=0"), out


@needs_openssl
def test_a_forged_signature_does_not_verify(tmp_path: Path) -> None:
    tbs = tss.leaf_tbs(record("DV", ed_key("f"), label="forged"), CHAIN, 0, GROUP.public_key)
    sig = bytearray(threshold_sign(GROUP, tbs))
    sig[40] ^= 1
    forged = tss.assemble(tbs, bytes(sig))
    leaf = x509.load_der_x509_certificate(forged)
    with pytest.raises(InvalidSignature):
        leaf.verify_directly_issued_by(x509.load_der_x509_certificate(ROOT_DER))
    out = openssl_verify(tmp_path, forged)
    assert not out.startswith("rc=0") and "certificate signature failure" in out, out
    # One signer alone cannot sign: a share from a single participant does not verify.
    nonce, comm = frost.commit(1, GROUP.shares[1], bytes(32), bytes(32))
    z = frost.sign(1, GROUP.shares[1], GROUP.public_key, nonce, tbs, [comm])
    lone = frost.aggregate([comm], tbs, GROUP.public_key, {1: z})
    assert not frost.verify_signature(GROUP.public_key, tbs, lone)


# --------------------------------------------------------------------------- CRL


@needs_openssl
def test_crl_revokes_the_listed_leaf_only(tmp_path: Path) -> None:
    revoked_cert = record("OV", p256_key("revoked"), label="revoked")
    kept_cert = record("DV", ed_key("kept"), label="kept")
    superseded = record("DV", ed_key("sup"), label="superseded")
    entries = [
        (tss.leaf_serial(revoked_cert.cert_id, 0), NOW_S - 60, 1),  # keyCompromise
        (tss.leaf_serial(superseded.cert_id, 0), NOW_S - 30, 0),  # unspecified
    ]
    tbs = tss.crl_tbs(CHAIN, GROUP.public_key, 9, NOW_S - 10, NOW_S + 86_400, entries)
    crl_der = tss.assemble(tbs, threshold_sign(GROUP, tbs))
    crl = x509.load_der_x509_crl(crl_der)
    root = x509.load_der_x509_certificate(ROOT_DER)
    assert crl.is_signature_valid(ed25519.Ed25519PublicKey.from_public_bytes(GROUP.public_key))
    assert crl.issuer == root.subject
    assert crl.last_update_utc.timestamp() == NOW_S - 10
    assert crl.next_update_utc is not None and crl.next_update_utc.timestamp() == NOW_S + 86_400
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value
    assert number.crl_number == 9
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == tss.key_id(GROUP.public_key)
    assert [r.serial_number for r in crl] == [s for s, _, _ in entries]
    first = crl.get_revoked_certificate_by_serial_number(entries[0][0])
    assert first is not None
    assert first.revocation_date_utc.timestamp() == NOW_S - 60
    reason = first.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason == x509.ReasonFlags.key_compromise
    second = crl.get_revoked_certificate_by_serial_number(entries[1][0])
    assert second is not None and len(second.extensions) == 0  # RFC 5280 §5.3.1
    crl_pem = write(tmp_path / "crl.pem", crl_der, "X509 CRL")
    text = openssl("crl", "-in", str(crl_pem), "-noout", "-text")
    assert text.returncode == 0 and "Key Compromise" in text.stdout, text.stderr
    check = ("-crl_check", "-CRLfile", str(crl_pem))
    out = openssl_verify(tmp_path, leaf_der(revoked_cert), *check)
    assert not out.startswith("rc=0") and "certificate revoked" in out, out
    out = openssl_verify(tmp_path, leaf_der(superseded), *check)
    assert not out.startswith("rc=0") and "certificate revoked" in out, out
    out = openssl_verify(tmp_path, leaf_der(kept_cert), *check)
    assert out.startswith("rc=0") and "leaf.pem: OK" in out, out
    # A new version of the revoked certificate has another serial: not listed.
    out = openssl_verify(tmp_path, leaf_der(revoked_cert, version=1), *check)
    assert out.startswith("rc=0"), out


def test_empty_crl_and_every_rfc_reason_code() -> None:
    entries = [(100 + code, NOW_S, code) for code in (0, 1, 2, 3, 4, 5, 6, 8, 9, 10)]
    for listed in ([], entries):
        tbs = tss.crl_tbs(CHAIN, GROUP.public_key, 0, NOW_S, NOW_S + 60, listed)
        crl = x509.load_der_x509_crl(tss.assemble(tbs, threshold_sign(GROUP, tbs)))
        assert crl.is_signature_valid(ed25519.Ed25519PublicKey.from_public_bytes(GROUP.public_key))
        assert len(crl) == len(listed)
    with pytest.raises(tss.TbsError, match="CRLReason"):
        tss.crl_tbs(CHAIN, GROUP.public_key, 0, NOW_S, NOW_S + 60, [(5, NOW_S, 7)])


# --------------------------------------------------------------------------- TLS


def _tls_attempt(
    tmp: Path, key: SigningKey, cert: Certificate, server_hostname: str
) -> tuple[BaseException | None, list[tuple[str, str]]]:
    """Serve the leaf on 127.0.0.1 from a thread; connect trusting only the root."""
    leaf_pem = write(tmp / "leaf.pem", leaf_der(cert))
    key_pem = tmp / "leaf.key"
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    root_pem = write(tmp / "root.pem", ROOT_DER)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(leaf_pem), str(key_pem))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    server_errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello from dpkid\n")
        except (OSError, ssl.SSLError) as exc:
            server_errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(root_pem))
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    error: BaseException | None = None
    names: list[tuple[str, str]] = []
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            assert tls.recv(100) == b"hello from dpkid\n"
            peer = tls.getpeercert() or {}
            names = [(str(item[0]), str(item[1])) for item in peer.get("subjectAltName", ())]
    except (OSError, ssl.SSLError) as exc:
        error = exc
    finally:
        thread.join(timeout=15)
        listener.close()
    assert not thread.is_alive()
    return error, names


@pytest.mark.parametrize("key_name", ["ed25519", "p256"])
def test_python_ssl_trusts_the_leaf_through_the_root_alone(tmp_path: Path, key_name: str) -> None:
    key = KEYS[key_name]()
    cert = record("DV", key, label=f"tls-{key_name}")
    error, names = _tls_attempt(tmp_path, key, cert, "tls.example.test")
    assert error is None, repr(error)
    assert ("DNS", "tls.example.test") in names
    # A name under the wildcard is accepted as well.
    error, _ = _tls_attempt(tmp_path, key, cert, "api.tls.example.test")
    assert error is None, repr(error)


@pytest.mark.parametrize("key_name", ["ed25519", "p256"])
def test_python_ssl_rejects_the_leaf_for_another_name(tmp_path: Path, key_name: str) -> None:
    key = KEYS[key_name]()
    cert = record("DV", key, label=f"tls-wrong-{key_name}")
    error, _ = _tls_attempt(tmp_path, key, cert, "other.example.test")
    assert isinstance(error, ssl.SSLCertVerificationError), repr(error)
    assert "hostname mismatch" in str(error).lower(), str(error)


# --------------------------------------------------------------------------- determinism


_SUBPROCESS_CODE = """
from dpkid.core.tss import x509 as tss
from dpkid.dev import x509_vectors as v
_, gpk = v.group()
print(tss.root_tbs(v.CHAIN_ID, gpk, v.ROOT_NOT_BEFORE_S).hex())
print(tss.leaf_tbs(v.dv_record(), v.CHAIN_ID, 0, gpk).hex())
print(tss.leaf_tbs(v.ev_record(), v.CHAIN_ID, 3, gpk).hex())
print(tss.crl_tbs(v.CHAIN_ID, gpk, 2, 10**9, 10**9 + 60, [(5, 10**9, 4), (6, 10**9, 0)]).hex())
"""


def _local_tbs() -> list[str]:
    v = x509_vectors
    _, gpk = v.group()
    return [
        tss.root_tbs(v.CHAIN_ID, gpk, v.ROOT_NOT_BEFORE_S).hex(),
        tss.leaf_tbs(v.dv_record(), v.CHAIN_ID, 0, gpk).hex(),
        tss.leaf_tbs(v.ev_record(), v.CHAIN_ID, 3, gpk).hex(),
        tss.crl_tbs(v.CHAIN_ID, gpk, 2, 10**9, 10**9 + 60, [(5, 10**9, 4), (6, 10**9, 0)]).hex(),
    ]


def test_tbs_bytes_are_identical_across_calls_and_processes() -> None:
    first, second = _local_tbs(), _local_tbs()
    assert first == second
    env = {**os.environ, "PYTHONHASHSEED": "4242", "TZ": "Pacific/Kiritimati"}
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_CODE],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    )
    assert out.stdout.split() == first


# --------------------------------------------------------------------------- hard records


LONG_NAME = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 56 + ".test"


@needs_openssl
def test_records_the_old_exporter_could_not_encode_still_verify(tmp_path: Path) -> None:
    assert len(validate_domain(LONG_NAME)) == 253
    long_first = record("DV", ed_key("long"), domains=[LONG_NAME, "short.test"], label="long")
    odd_ev = [
        msgspec.structs.replace(ORG, jurisdiction="x"),
        msgspec.structs.replace(ORG, registration_id="Reg é-1", jurisdiction=""),
        msgspec.structs.replace(ORG, registration_id="REG_1", jurisdiction="us"),
    ]
    cases = [long_first] + [
        record("EV", p256_key("odd"), org=org, label=f"odd-{i}") for i, org in enumerate(odd_ev)
    ]
    for cert in cases:
        with pytest.raises(ValueError):  # SPEC §14.5's note: these could not be exported
            to_x509(cert, CHAIN, 12)
        leaf_bytes = leaf_der(cert)
        out = openssl_verify(tmp_path, leaf_bytes, "-x509_strict")
        assert out.startswith("rc=0") and "leaf.pem: OK" in out, out
        leaf = x509.load_der_x509_certificate(leaf_bytes)
        san = ext(leaf, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        assert isinstance(san.value, x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.DNSName) == cert.domains
    long_leaf = x509.load_der_x509_certificate(leaf_der(long_first))
    assert len(long_leaf.subject) == 0  # no CN over 64 octets, so an empty subject ...
    assert ext(long_leaf, ExtensionOID.SUBJECT_ALTERNATIVE_NAME).critical  # ... and a critical SAN
    for cert in cases[1:]:
        subject = x509.load_der_x509_certificate(leaf_der(cert)).subject
        oids = [a.oid for a in subject]
        assert tss.OID_JURISDICTION_COUNTRY not in oids
        assert NameOID.ORGANIZATION_NAME in oids and NameOID.COMMON_NAME in oids
    # registration ids outside PrintableString are left out; PrintableString ones kept.
    kept = x509.load_der_x509_certificate(leaf_der(cases[1])).subject
    assert NameOID.SERIAL_NUMBER in [a.oid for a in kept]
    for cert in cases[2:]:
        oids = [a.oid for a in x509.load_der_x509_certificate(leaf_der(cert)).subject]
        assert NameOID.SERIAL_NUMBER not in oids


@needs_openssl
def test_largest_ledger_record_verifies_and_serves_tls(tmp_path: Path) -> None:
    # Every field at its ledger maximum: 128-character organisation fields (twice the
    # X.509 upper bound for O), a 128-character registration id and many 253-octet names.
    names = [f"{i:02d}" + LONG_NAME[2:] for i in range(50)]
    org = OrgIdentity(
        name="Ö" * 128,
        country="CH",
        state="S" * 128,
        locality="L" * 128,
        registration_id="R" * 128,
        jurisdiction="CH-ZH",
    )
    key = p256_key("big")
    cert = record("EV", key, domains=names, org=org, label="big")
    leaf_bytes = leaf_der(cert)
    assert len(leaf_bytes) > 12_000
    out = openssl_verify(tmp_path, leaf_bytes, "-x509_strict")
    assert out.startswith("rc=0") and "leaf.pem: OK" in out, out
    error, _ = _tls_attempt(tmp_path, key, cert, names[7])
    assert error is None, repr(error)


def test_failures_are_tbs_errors() -> None:
    good = record("DV", ed_key("e"), label="err")
    gpk = GROUP.public_key
    with pytest.raises(tss.TbsError):
        tss.root_tbs(CHAIN, bytes(32), 0)  # not a prime-order point
    with pytest.raises(tss.TbsError):
        tss.leaf_tbs(good, CHAIN, 0, b"\x01" + bytes(31))  # the identity
    with pytest.raises(tss.TbsError):
        tss.leaf_tbs(msgspec.structs.replace(good, spki=b"\x30\x00"), CHAIN, 0, GROUP.public_key)
    with pytest.raises(tss.TbsError):
        tss.leaf_tbs(good, CHAIN, -1, GROUP.public_key)
    with pytest.raises(tss.TbsError):
        tss.leaf_tbs(msgspec.structs.replace(good, domains=["bücher.example"]), CHAIN, 0, gpk)
    with pytest.raises(tss.TbsError):
        tss.root_tbs("c" * 54, GROUP.public_key, 0)  # CN would exceed 64 octets
    with pytest.raises(tss.TbsError):
        tss.root_tbs(CHAIN, GROUP.public_key, 2**62)  # after year 9999
    with pytest.raises(tss.TbsError):
        tss.assemble(b"\x30\x05abc", bytes(64))
    with pytest.raises(tss.TbsError):
        tss.assemble(tss.root_tbs(CHAIN, GROUP.public_key, 0), bytes(63))
    # The longest chain id the ledger allows still fits the root's CN.
    tss.root_tbs("c" * 50, GROUP.public_key, 0)


def test_assemble_and_pem_are_plain_der_and_rfc7468() -> None:
    tbs = tss.root_tbs(CHAIN, GROUP.public_key, 0)
    sig = threshold_sign(GROUP, tbs)
    der = tss.assemble(tbs, sig)
    assert der[:1] == b"\x30"
    assert der.endswith(b"\x30\x05\x06\x03\x2b\x65\x70\x03\x41\x00" + sig)
    assert x509.load_der_x509_certificate(der).tbs_certificate_bytes == tbs
    text = tss.pem(der)
    assert x509.load_pem_x509_certificate(text).public_bytes(serialization.Encoding.DER) == der
    lines = text.decode().splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "-----END CERTIFICATE-----"
    assert all(len(line) <= 64 for line in lines[1:-1])


# --------------------------------------------------------------------------- golden vectors


def test_vector_file_is_current() -> None:
    """protocol/vectors/x509-tss.json equals what the code generates
    (regenerate with ``dpkid vectors``)."""
    assert VECTORS.read_text() == x509_vectors.vector_text()


def test_vectors_rebuild_from_their_stated_inputs() -> None:
    v = json.loads(VECTORS.read_text())
    d = v["dealer"]
    shares, gpk, _ = frost.trusted_dealer_keygen(
        frost.deserialize_scalar(bytes.fromhex(d["secret_key"])),
        [frost.deserialize_scalar(bytes.fromhex(c)) for c in d["coefficients"]],
        d["max_participants"],
        d["min_participants"],
    )
    assert bytes(gpk).hex() == v["group_public_key"]
    assert tss.key_id(gpk).hex() == v["key_id"]
    chain = v["chain_id"]
    assert tss.root_tbs(chain, gpk, v["root"]["not_before_s"]).hex() == v["root"]["tbs"]
    for name in ("dv_leaf", "ev_leaf"):
        case = v[name]
        fields = case["record"]
        org = fields["org"]
        # Bytes are hex, lists of bytes are lists of hex, org is an object or null.
        kwargs: dict[str, Any] = {
            k: bytes.fromhex(val) if k in _BYTES_FIELDS else val for k, val in fields.items()
        }
        for k in ("endorsers", "attestors", "revoke_votes"):
            kwargs[k] = [bytes.fromhex(x) for x in fields[k]]
        kwargs["org"] = OrgIdentity(**org) if org else None
        cert = Certificate(**kwargs)
        assert codec.encode(cert).hex() == case["record_encoding"]
        assert tss.leaf_tbs(cert, chain, case["version"], gpk).hex() == case["tbs"]
        assert hex(tss.leaf_serial(cert.cert_id, case["version"])) == case["serial"]
    crl = v["crl"]
    revoked = [(int(r["serial"], 16), r["revoked_s"], r["reason"]) for r in crl["revoked"]]
    tbs = tss.crl_tbs(
        chain, gpk, crl["number"], crl["this_update_s"], crl["next_update_s"], revoked
    )
    assert tbs.hex() == crl["tbs"]
    for case in (v["root"], v["dv_leaf"], v["ev_leaf"], crl):
        tbs, sig = bytes.fromhex(case["tbs"]), bytes.fromhex(case["signature"])
        assert frost.verify_signature(gpk, tbs, sig)
        assert tss.assemble(tbs, sig).hex() == case["der"]
    root = x509.load_der_x509_certificate(bytes.fromhex(v["root"]["der"]))
    for name in ("dv_leaf", "ev_leaf"):
        x509.load_der_x509_certificate(bytes.fromhex(v[name]["der"])).verify_directly_issued_by(
            root
        )
    for s in v["leaf_serials"]:
        assert hex(tss.leaf_serial(bytes.fromhex(s["cert_id"]), s["version"])) == s["serial"]
    assert dict(shares)  # the dealer's shares exist for the stated signers
    assert set(d["signers"]) <= set(dict(shares))


_BYTES_FIELDS = {"cert_id", "app_id", "owner", "spki", "renews", "superseded_by"}
