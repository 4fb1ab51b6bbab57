"""Export ledger certificates as standard X.509 v3 certificates (SPEC §14).

The ledger, not the X.509 signature, is what makes a dpkid certificate
trustworthy: a relying party verifies the record by proof against headers
signed by the validators. The X.509 form exists so ordinary TLS software can
carry the name, key and validity. Its signature is made either by the subject
key itself (when the holder exports with its private key: a self-signed
certificate that also proves possession), or by the chain's published export
key, derived from the chain id, which anyone can compute and which therefore
asserts nothing on its own. Verifiers must check the ledger reference
extension against the ledger (``dpkid verify``, ``dpkid tls-check``).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from dpkid.core.crypto import sha256
from dpkid.core.tss.x509 import (
    DPKID_ARC,
    OID_CABF_TYPE,
    OID_DPKID_TYPE,
    OID_JURISDICTION_COUNTRY,
    OID_LEDGER_REF,
    cert_policies,
    ledger_ref,
    ledger_ref_extension,
)
from dpkid.core.types import Certificate

# The OIDs and the ledger reference are defined once, with the threshold-signed
# formats (dpkid/core/tss/x509.py), and re-exported here.
__all__ = [
    "DPKID_ARC",
    "EXPORT_KEY_TAG",
    "KEY_USAGE_BITS",
    "OID_CABF_TYPE",
    "OID_DPKID_TYPE",
    "OID_JURISDICTION_COUNTRY",
    "OID_LEDGER_REF",
    "ExportError",
    "SubjectPrivateKey",
    "claimed_type",
    "export_key",
    "key_usage",
    "ledger_ref",
    "ledger_ref_extension",
    "parse_ledger_ref",
    "to_pem",
    "to_x509",
]


EXPORT_KEY_TAG: Final = b"dpkid/x509-export-key/v1\x00"

SubjectPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class ExportError(ValueError):
    pass


KEY_USAGE_BITS: Final = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def key_usage(*granted: str) -> x509.KeyUsage:
    """RFC 5280 §4.2.1.3 keyUsage with exactly the ``granted`` bits set."""
    unknown = set(granted) - set(KEY_USAGE_BITS)
    if unknown:
        raise ValueError(f"unknown keyUsage bits: {sorted(unknown)}")
    return x509.KeyUsage(**{bit: bit in granted for bit in KEY_USAGE_BITS})


def export_key(chain_id: str) -> ed25519.Ed25519PrivateKey:
    """The chain's public export key: derived from the chain id, so it is not a secret."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(sha256(EXPORT_KEY_TAG + chain_id.encode()))


def parse_ledger_ref(cert: x509.Certificate) -> dict[str, Any] | None:
    try:
        ext = cert.extensions.get_extension_for_oid(OID_LEDGER_REF)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    raw = value.value
    if len(raw) < 2 or raw[0] != 0x0C:
        return None
    off = 2 if raw[1] < 0x80 else 2 + (raw[1] & 0x7F)
    try:
        parts = raw[off:].decode().split(":")
        if len(parts) != 5 or parts[0] != "dpkid":
            return None
        return {
            "chain_id": parts[1],
            "height": int(parts[2]),
            "cert_id": bytes.fromhex(parts[3]),
            "log_index": int(parts[4]),
        }
    except (UnicodeDecodeError, ValueError):
        return None


def claimed_type(cert: x509.Certificate) -> str | None:
    try:
        pols = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        return None
    oids = {p.policy_identifier for p in pols}
    for t, oid in OID_DPKID_TYPE.items():
        if oid in oids:
            return t
    return None


def _ms_to_dt(ms: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ms // 1000, tz=_dt.UTC)


def to_x509(
    cert: Certificate,
    chain_id: str,
    log_height: int,
    signing_key: SubjectPrivateKey | None = None,
) -> x509.Certificate:
    subject_pub = serialization.load_der_public_key(cert.spki)
    if signing_key is not None:
        own = signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if own != cert.spki:
            raise ExportError("the given private key is not the certificate's subject key")
    names: list[x509.NameAttribute[Any]] = []
    if cert.org is not None and cert.cert_type in ("OV", "EV"):
        o = cert.org
        names.append(x509.NameAttribute(NameOID.COUNTRY_NAME, o.country))
        if o.state:
            names.append(x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, o.state))
        if o.locality:
            names.append(x509.NameAttribute(NameOID.LOCALITY_NAME, o.locality))
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o.name))
        if cert.cert_type == "EV":
            if o.registration_id:
                names.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, o.registration_id))
            if o.jurisdiction:
                names.append(x509.NameAttribute(OID_JURISDICTION_COUNTRY, o.jurisdiction[:2]))
    names.append(x509.NameAttribute(NameOID.COMMON_NAME, cert.domains[0]))
    issuer = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dpkid ledger"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"dpkid {chain_id}"),
        ]
    )
    serial = int.from_bytes(cert.cert_id[:16], "big") >> 1 or 1
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(x509.Name(names) if signing_key is not None else issuer)
        .public_key(subject_pub)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(_ms_to_dt(cert.not_before_ms))
        .not_valid_after(_ms_to_dt(cert.not_after_ms))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in cert.domains]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(cert_policies(cert.cert_type), critical=False)
        .add_extension(
            ledger_ref_extension(chain_id, cert.issued_height, cert.cert_id, cert.log_index),
            critical=False,
        )
    )
    if not isinstance(subject_pub, ed25519.Ed25519PublicKey):
        builder = builder.add_extension(
            key_usage(
                "digital_signature",
                *(["key_encipherment"] if isinstance(subject_pub, rsa.RSAPublicKey) else []),
            ),
            critical=True,
        )
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
    )
    key: Any = signing_key if signing_key is not None else export_key(chain_id)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algo)


def to_pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)
