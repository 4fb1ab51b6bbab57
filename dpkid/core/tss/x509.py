"""The X.509 bytes the validators threshold-sign: root, leaf and CRL TBS (protocol/SPEC.md §14.6).

The ledger computes the exact DER ``TBSCertificate`` of the chain's
self-signed root and of every leaf certificate, and the ``TBSCertList`` of
every CRL, from ledger records alone; the validators sign those bytes with
shares of the group key (FROST, RFC 9591), and anyone wraps TBS and signature
into the final DER with :func:`assemble`.  Ordinary TLS software then verifies
a dpkid certificate against one root whose private key nobody holds.

This is consensus code.  Every function is pure: the same inputs give the same
bytes in any process.  The TBS comes from ``cryptography``'s builders (DER is
canonical, so the encoding has one spelling): the builder is signed with a
fixed dummy key of the scheme, and only the to-be-signed part is kept.

Building a leaf TBS never fails for a record the ledger accepts: everything
that would make the library refuse (a common name over 64 octets, a
jurisdiction that is not a country code, a registration id outside the
PrintableString alphabet) is left out of the certificate instead.  What fails
anyway raises :class:`TbsError` with a message that depends only on the
inputs, never another exception type.

The OID constants and the ledger reference helpers live here (the client's
exporter, ``dpkid/client/x509.py``, imports them), so there is one copy.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dpkid.core import frost
from dpkid.core.crypto import sha256
from dpkid.core.types import Certificate

__all__ = [
    "DPKID_ARC",
    "ED25519",
    "MAX_SERIAL",
    "NOT_AFTER_FOREVER",
    "OID_CABF_TYPE",
    "OID_DPKID_TYPE",
    "OID_JURISDICTION_COUNTRY",
    "OID_LEDGER_REF",
    "SigScheme",
    "TbsError",
    "assemble",
    "crl_tbs",
    "key_id",
    "leaf_serial",
    "leaf_tbs",
    "ledger_ref",
    "ledger_ref_extension",
    "pem",
    "root_name",
    "root_ref",
    "root_serial",
    "root_tbs",
]

# 2.25.<uuid> is an OID anyone may use without registration (ITU-T X.667).
DPKID_ARC: Final = "2.25.198472309651873226097328425071626716801"
OID_LEDGER_REF: Final = x509.ObjectIdentifier(DPKID_ARC + ".1")
OID_DPKID_TYPE: Final = {
    "DV": x509.ObjectIdentifier(DPKID_ARC + ".2.1"),
    "OV": x509.ObjectIdentifier(DPKID_ARC + ".2.2"),
    "EV": x509.ObjectIdentifier(DPKID_ARC + ".2.3"),
}
# CA/Browser Forum certificate policy OIDs for the same validation levels.
OID_CABF_TYPE: Final = {
    "DV": x509.ObjectIdentifier("2.23.140.1.2.1"),
    "OV": x509.ObjectIdentifier("2.23.140.1.2.2"),
    "EV": x509.ObjectIdentifier("2.23.140.1.1"),
}
OID_JURISDICTION_COUNTRY: Final = x509.ObjectIdentifier("1.3.6.1.4.1.311.60.2.1.3")

ROOT_ORG: Final = "dpkid ledger"
ROOT_CN_PREFIX: Final = "dpkid root "
ROOT_SERIAL_TAG: Final = b"dpkid/root/v1\x00"
# RFC 5280 §4.1.2.5: "no well-defined expiration date".
NOT_AFTER_FOREVER: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
# RFC 5280 §4.1.2.2 and §5.2.3: serial numbers and CRL numbers fit in 20 octets.
MAX_SERIAL: Final = 2**159 - 1
MAX_CN_OCTETS: Final = 64  # ub-common-name
KEY_ID_LEN: Final = 20
MAX_VERSION: Final = 2**32 - 1

# The PrintableString alphabet (X.680 §41.4).
_PRINTABLE: Final = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
_COUNTRY: Final = re.compile(r"[A-Z]{2}")

# RFC 5280 §5.3.1 CRLReason codes (7 is not used).
_REASONS: Final = {
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


# The digests a dummy signer may name (None for Ed25519, which hashes internally).
SignHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None


class TbsError(ValueError):
    """The inputs cannot be encoded; the message depends only on the inputs."""


# --------------------------------------------------------------------------- DER


def _der_len(n: int) -> bytes:
    """A DER definite length in the shortest form (X.690 §8.1.3, §10.1)."""
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _der_utf8(s: str) -> bytes:
    return _der_tlv(0x0C, s.encode())


def _is_der_sequence(der: bytes) -> bool:
    """Whether ``der`` is exactly one SEQUENCE TLV with a minimal definite length."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        return len(der) == 2 + first
    n = first & 0x7F
    if n == 0 or n > 4 or len(der) < 2 + n:
        return False
    length = int.from_bytes(der[2 : 2 + n], "big")
    return _der_len(length) == der[1 : 2 + n] and len(der) == 2 + n + length


# --------------------------------------------------------------------------- ledger reference


def ledger_ref(chain_id: str, height: int, cert_id: bytes, log_index: int) -> str:
    return f"dpkid:{chain_id}:{height}:{cert_id.hex()}:{log_index}"


def ledger_ref_extension(
    chain_id: str, height: int, cert_id: bytes, log_index: int
) -> x509.UnrecognizedExtension:
    """The X.509 extension that points at the ledger record (non-critical)."""
    return x509.UnrecognizedExtension(
        OID_LEDGER_REF, _der_utf8(ledger_ref(chain_id, height, cert_id, log_index))
    )


def root_ref(chain_id: str) -> str:
    """The root's chain marker, carried in the ledger reference extension."""
    return f"dpkid:{chain_id}:root"


# --------------------------------------------------------------------------- schemes


_DUMMY_ED25519_SEED: Final = sha256(b"dpkid/x509-tbs-dummy-key/v1\x00")


def _ed25519_public_key(group_pk: bytes) -> CertificatePublicKeyTypes:
    try:
        element = frost.deserialize_element(bytes(group_pk))
    except (frost.FrostError, TypeError) as exc:
        raise TbsError("the group key is not a valid Ed25519 public key") from exc
    return ed25519.Ed25519PublicKey.from_public_bytes(element)


def _ed25519_dummy() -> tuple[CertificateIssuerPrivateKeyTypes, SignHash]:
    return ed25519.Ed25519PrivateKey.from_private_bytes(_DUMMY_ED25519_SEED), None


def _ed25519_signature_bits(sig: bytes) -> bytes:
    if not isinstance(sig, bytes | bytearray) or len(sig) != frost.SIGNATURE_LEN:
        raise TbsError(f"an Ed25519 signature has {frost.SIGNATURE_LEN} bytes")
    return b"\x00" + bytes(sig)


@dataclass(frozen=True)
class SigScheme:
    """How the group key signs: the one place a threshold ECDSA P-256 issuer would plug in.

    ``public_key`` turns the group key bytes into a ``cryptography`` key (or
    raises TbsError), ``dummy_signer`` gives a fixed private key of the same
    algorithm (and hash) used only to obtain the TBS from the builders, and
    ``encode_signature`` gives the BIT STRING content for a signature.
    """

    name: str
    algorithm_identifier_der: bytes
    public_key: Callable[[bytes], CertificatePublicKeyTypes] = field(repr=False)
    dummy_signer: Callable[[], tuple[CertificateIssuerPrivateKeyTypes, SignHash]] = field(
        repr=False
    )
    encode_signature: Callable[[bytes], bytes] = field(repr=False)

    def spki(self, group_pk: bytes) -> bytes:
        """SubjectPublicKeyInfo DER of the group key."""
        return self.public_key(group_pk).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def signature_bits(self, sig: bytes) -> bytes:
        """The content of the signatureValue BIT STRING (unused-bits octet first)."""
        return self.encode_signature(sig)


ED25519: Final = SigScheme(
    name="ed25519",
    algorithm_identifier_der=bytes.fromhex("300506032b6570"),  # id-Ed25519, RFC 8410 §3
    public_key=_ed25519_public_key,
    dummy_signer=_ed25519_dummy,
    encode_signature=_ed25519_signature_bits,
)


# --------------------------------------------------------------------------- helpers


def cert_policies(cert_type: str) -> x509.CertificatePolicies:
    """The CA/Browser Forum policy of the type, then dpkid's (SPEC §14.2)."""
    return x509.CertificatePolicies(
        [
            x509.PolicyInformation(OID_CABF_TYPE[cert_type], None),
            x509.PolicyInformation(OID_DPKID_TYPE[cert_type], None),
        ]
    )


def root_name(chain_id: str) -> x509.Name:
    """Issuer (and the root's subject): O = "dpkid ledger", CN = "dpkid root " + chain_id."""
    cn = ROOT_CN_PREFIX + chain_id
    if not chain_id or len(cn.encode()) > MAX_CN_OCTETS:
        raise TbsError(f"chain id must have 1 to {MAX_CN_OCTETS - len(ROOT_CN_PREFIX)} octets")
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ROOT_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def key_id(group_pk: bytes) -> bytes:
    """The 20-byte key identifier of the group key: sha256(group_pk)[0..20]."""
    return sha256(bytes(group_pk))[:KEY_ID_LEN]


def _serial_from(digest: bytes) -> int:
    return int.from_bytes(digest[:16], "big") >> 1 or 1


def root_serial(group_pk: bytes) -> int:
    return _serial_from(sha256(ROOT_SERIAL_TAG + bytes(group_pk)))


def leaf_serial(cert_id: bytes, version: int) -> int:
    """Serial of the ``version``-th signed form of a certificate (positive, below 2^127)."""
    if not 0 <= version <= MAX_VERSION:
        raise TbsError(f"version must be in [0, {MAX_VERSION}]")
    if version == 0:
        return _serial_from(cert_id)  # SPEC §14.2's serial, unchanged
    return _serial_from(sha256(cert_id + version.to_bytes(4, "big")))


def _time(s: int, what: str) -> datetime:
    if not isinstance(s, int) or s < 0:
        raise TbsError(f"{what} must be a non-negative number of seconds")
    try:
        t = datetime.fromtimestamp(s, tz=UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise TbsError(f"{what} is after 9999-12-31T23:59:59Z") from exc
    if t > NOT_AFTER_FOREVER:
        raise TbsError(f"{what} is after 9999-12-31T23:59:59Z")
    return t


def _tbs_of(signed: x509.Certificate | x509.CertificateRevocationList, scheme: SigScheme) -> bytes:
    """The TBS of a dummy-signed object, after checking that :func:`assemble`
    reproduces the library's own encoding (and so the signature algorithm)."""
    der = signed.public_bytes(serialization.Encoding.DER)
    if isinstance(signed, x509.Certificate):
        tbs = signed.tbs_certificate_bytes
    else:
        tbs = signed.tbs_certlist_bytes
    if assemble(tbs, signed.signature, scheme) != der:
        raise TbsError(f"the {scheme.name} scheme does not match the library's encoding")
    return tbs


def _sign_dummy(
    builder: x509.CertificateBuilder | x509.CertificateRevocationListBuilder,
    scheme: SigScheme,
    what: str,
) -> bytes:
    try:
        key, algorithm = scheme.dummy_signer()
        signed = builder.sign(key, algorithm)
    except TbsError:
        raise
    except Exception as exc:  # the contract: TbsError and nothing else
        raise TbsError(f"cannot encode the {what}") from exc
    return _tbs_of(signed, scheme)


def _key_usage(*granted: str) -> x509.KeyUsage:
    bits = (
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
    return x509.KeyUsage(**{bit: bit in granted for bit in bits})


def _aki(group_pk: bytes) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier(
        key_identifier=key_id(group_pk),
        authority_cert_issuer=None,
        authority_cert_serial_number=None,
    )


# --------------------------------------------------------------------------- root


def root_tbs(
    chain_id: str, group_pk: bytes, not_before_s: int, scheme: SigScheme = ED25519
) -> bytes:
    """TBSCertificate of the chain's self-signed root for the group key."""
    name = root_name(chain_id)
    public_key = scheme.public_key(group_pk)
    try:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(root_serial(group_pk))
            .not_valid_before(_time(not_before_s, "notBefore"))
            .not_valid_after(NOT_AFTER_FOREVER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(key_id(group_pk)), critical=False)
            .add_extension(
                x509.UnrecognizedExtension(OID_LEDGER_REF, _der_utf8(root_ref(chain_id))),
                critical=False,
            )
        )
    except TbsError:
        raise
    except Exception as exc:
        raise TbsError("cannot encode the root certificate") from exc
    return _sign_dummy(builder, scheme, "root certificate")


# --------------------------------------------------------------------------- leaf


def _leaf_subject(cert: Certificate) -> list[x509.NameAttribute[Any]]:
    """SPEC §14.2's subject, without the attributes X.509 cannot carry."""
    names: list[x509.NameAttribute[Any]] = []
    o = cert.org
    if o is not None and cert.cert_type in ("OV", "EV"):
        if _COUNTRY.fullmatch(o.country):
            names.append(x509.NameAttribute(NameOID.COUNTRY_NAME, o.country))
        if o.state:
            names.append(x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, o.state))
        if o.locality:
            names.append(x509.NameAttribute(NameOID.LOCALITY_NAME, o.locality))
        if o.name:
            names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o.name))
        if cert.cert_type == "EV":
            if o.registration_id and _PRINTABLE.fullmatch(o.registration_id):
                names.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, o.registration_id))
            if _COUNTRY.fullmatch(o.jurisdiction[:2]):
                names.append(x509.NameAttribute(OID_JURISDICTION_COUNTRY, o.jurisdiction[:2]))
    first = cert.domains[0] if cert.domains else ""
    if 1 <= len(first.encode()) <= MAX_CN_OCTETS:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, first))
    return names


def _subject_public_key(spki: bytes) -> CertificatePublicKeyTypes:
    try:
        key = serialization.load_der_public_key(bytes(spki))
    except Exception as exc:
        raise TbsError("the subject key is not a DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise TbsError("the subject key's algorithm is not accepted")
    own = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if own != spki:
        raise TbsError("the subject key is not in canonical SPKI DER form")
    return key


def leaf_tbs(
    cert: Certificate,
    chain_id: str,
    version: int,
    group_pk: bytes,
    scheme: SigScheme = ED25519,
) -> bytes:
    """TBSCertificate of ``version`` of the ledger certificate ``cert``, issued by the root."""
    if cert.cert_type not in OID_DPKID_TYPE:
        raise TbsError(f"unknown certificate type {cert.cert_type!r}")
    if not cert.domains:
        raise TbsError("a certificate needs at least one name")
    serial = leaf_serial(cert.cert_id, version)
    issuer = root_name(chain_id)
    scheme.public_key(group_pk)  # the group key must be valid for the scheme
    subject_key = _subject_public_key(cert.spki)
    not_before = _time(cert.not_before_ms // 1000, "notBefore")
    not_after = _time(cert.not_after_ms // 1000, "notAfter")
    if not_after < not_before:
        raise TbsError("notAfter is before notBefore")
    usage = ["digital_signature"]
    if isinstance(subject_key, rsa.RSAPublicKey):
        usage.append("key_encipherment")
    try:
        subject = _leaf_subject(cert)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(issuer)
            .public_key(subject_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # RFC 5280 §4.2.1.6: with an empty subject the SAN is critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(d) for d in cert.domains]),
                critical=not subject,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(cert_policies(cert.cert_type), critical=False)
            .add_extension(
                ledger_ref_extension(chain_id, cert.issued_height, cert.cert_id, cert.log_index),
                critical=False,
            )
            .add_extension(_key_usage(*usage), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(_aki(group_pk), critical=False)
        )
    except TbsError:
        raise
    except Exception as exc:
        raise TbsError("cannot encode the certificate") from exc
    return _sign_dummy(builder, scheme, "certificate")


# --------------------------------------------------------------------------- CRL


def crl_tbs(
    chain_id: str,
    group_pk: bytes,
    number: int,
    this_update_s: int,
    next_update_s: int,
    revoked: Sequence[tuple[int, int, int]],
    scheme: SigScheme = ED25519,
) -> bytes:
    """TBSCertList of CRL ``number``; ``revoked`` is (serial, revoked_s, reason code), in order."""
    issuer = root_name(chain_id)
    scheme.public_key(group_pk)
    if not isinstance(number, int) or not 0 <= number <= MAX_SERIAL:
        raise TbsError("the CRL number must be in [0, 2^159)")
    this_update = _time(this_update_s, "thisUpdate")
    next_update = _time(next_update_s, "nextUpdate")
    if next_update < this_update:
        raise TbsError("nextUpdate is before thisUpdate")
    try:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer)
            .last_update(this_update)
            .next_update(next_update)
        )
        for i, (serial, revoked_s, reason) in enumerate(revoked):
            if not isinstance(serial, int) or not 1 <= serial <= MAX_SERIAL:
                raise TbsError(f"revoked entry {i}: the serial must be in [1, 2^159)")
            if reason != 0 and reason not in _REASONS:
                raise TbsError(f"revoked entry {i}: {reason!r} is not an RFC 5280 CRLReason")
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(_time(revoked_s, f"revoked entry {i}: revocationDate"))
            )
            if reason != 0:  # RFC 5280 §5.3.1: absent rather than "unspecified"
                entry = entry.add_extension(x509.CRLReason(_REASONS[reason]), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
        builder = builder.add_extension(_aki(group_pk), critical=False)
    except TbsError:
        raise
    except Exception as exc:
        raise TbsError("cannot encode the CRL") from exc
    return _sign_dummy(builder, scheme, "CRL")


# --------------------------------------------------------------------------- assembly


def assemble(tbs: bytes, sig: bytes, scheme: SigScheme = ED25519) -> bytes:
    """Certificate or CertificateList DER: SEQUENCE { tbs, algorithm, BIT STRING sig }."""
    if not isinstance(tbs, bytes | bytearray) or not _is_der_sequence(bytes(tbs)):
        raise TbsError("the TBS is not one DER SEQUENCE")
    body = bytes(tbs) + scheme.algorithm_identifier_der + _der_tlv(0x03, scheme.signature_bits(sig))
    return _der_tlv(0x30, body)


def pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    """RFC 7468 text encoding; use ``"X509 CRL"`` for CRLs."""
    b64 = base64.b64encode(bytes(der))
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    head = f"-----BEGIN {label}-----\n".encode()
    tail = f"-----END {label}-----\n".encode()
    return head + b"".join(line + b"\n" for line in lines) + tail
