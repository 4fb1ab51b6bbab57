from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from dpkid.core.keys import (
    MAX_SPKI_LEN,
    SigningKey,
    SubjectKeyError,
    parse_spki,
    sign_with_private_key,
    spki_der_of,
    verify_with_spki,
)

MESSAGE = b"revoke certificate 42"

# Fixed keys for the cheap algorithms so the module-level property tests can
# mutate their encodings; RSA is generated once in a fixture because it is slow.
ED25519 = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
P256 = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
P384 = ec.derive_private_key(0xFEDCBA0987654321, ec.SECP384R1())
SMALL_SPKIS = [spki_der_of(key) for key in (ED25519, P256, P384)]

OID_RSA = bytes.fromhex("06092a864886f70d010101")
OID_EC = bytes.fromhex("06072a8648ce3d0201")
OID_P256 = bytes.fromhex("06082a8648ce3d030107")


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    size_bytes = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size_bytes)]) + size_bytes + body


def _der_uint(value: int) -> bytes:
    # One spare bit keeps the sign bit clear, as DER requires for positives.
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _rsa_spki(modulus: int, exponent: int) -> bytes:
    algorithm = _tlv(0x30, OID_RSA + b"\x05\x00")
    key = _tlv(0x30, _der_uint(modulus) + _der_uint(exponent))
    return _tlv(0x30, algorithm + _tlv(0x03, b"\x00" + key))


def _ec_spki(curve_oid: bytes, point: bytes) -> bytes:
    algorithm = _tlv(0x30, OID_EC + curve_oid)
    return _tlv(0x30, algorithm + _tlv(0x03, b"\x00" + point))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def signing_keys(rsa_key: rsa.RSAPrivateKey) -> dict[str, SigningKey]:
    return {"ed25519": ED25519, "ecdsa-p256": P256, "ecdsa-p384": P384, "rsa": rsa_key}


def test_helper_builds_same_der_as_cryptography() -> None:
    point = P256.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert _ec_spki(OID_P256, point) == SMALL_SPKIS[1]


@pytest.mark.parametrize(
    ("algorithm", "bits"),
    [("ed25519", 256), ("ecdsa-p256", 256), ("ecdsa-p384", 384), ("rsa", 2048)],
)
def test_parse_accepted_keys(
    signing_keys: dict[str, SigningKey], algorithm: str, bits: int
) -> None:
    private_key = signing_keys[algorithm]
    der = spki_der_of(private_key)
    assert spki_der_of(private_key.public_key()) == der
    subject = parse_spki(der)
    assert subject.algorithm == algorithm
    assert subject.bits == bits
    assert subject.der == der
    assert subject.fingerprint == hashlib.sha256(der).digest()


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa"])
def test_sign_verify_round_trip(signing_keys: dict[str, SigningKey], algorithm: str) -> None:
    private_key = signing_keys[algorithm]
    der = spki_der_of(private_key)
    signature = sign_with_private_key(private_key, MESSAGE)
    assert verify_with_spki(der, signature, MESSAGE)
    assert not verify_with_spki(der, signature, MESSAGE + b"!")
    assert not verify_with_spki(der, signature[:-1], MESSAGE)
    assert not verify_with_spki(der, b"", MESSAGE)
    assert not verify_with_spki(der, bytes(len(signature)), MESSAGE)
    for other_name, other_key in signing_keys.items():
        if other_name != algorithm:
            assert not verify_with_spki(spki_der_of(other_key), signature, MESSAGE)


def test_verify_with_unacceptable_key_is_false() -> None:
    assert not verify_with_spki(b"not a key", b"sig", MESSAGE)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    signature = weak.sign(
        MESSAGE, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
    )
    assert not verify_with_spki(spki_der_of(weak), signature, MESSAGE)


def test_ecdsa_hash_is_bound_to_curve() -> None:
    signature = P384.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert not verify_with_spki(spki_der_of(P384), signature, MESSAGE)
    signature = P256.sign(MESSAGE, ec.ECDSA(hashes.SHA384()))
    assert not verify_with_spki(spki_der_of(P256), signature, MESSAGE)
    signature = P256.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert verify_with_spki(spki_der_of(P256), signature, MESSAGE)


def test_rsa_requires_pss_with_32_byte_salt(rsa_key: rsa.RSAPrivateKey) -> None:
    der = spki_der_of(rsa_key)
    pkcs1 = rsa_key.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    assert not verify_with_spki(der, pkcs1, MESSAGE)
    long_salt = rsa_key.sign(
        MESSAGE,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    assert not verify_with_spki(der, long_salt, MESSAGE)
    expected = rsa_key.sign(
        MESSAGE, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
    )
    assert verify_with_spki(der, expected, MESSAGE)


def _reason(der: bytes) -> str:
    with pytest.raises(SubjectKeyError) as info:
        parse_spki(der)
    assert str(info.value)
    return info.value.reason


def test_rsa_1024_is_weak() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert _reason(spki_der_of(weak)) == "weak_rsa"
    with pytest.raises(SubjectKeyError) as info:
        sign_with_private_key(weak, MESSAGE)
    assert info.value.reason == "weak_rsa"


def test_rsa_modulus_above_8192_bits_is_too_large() -> None:
    # The modulus need not be a real RSA modulus to exercise the size check.
    modulus = (1 << 8199) | 1
    assert _reason(_rsa_spki(modulus, 65537)) == "too_large"
    assert parse_spki(_rsa_spki((1 << 8191) | 1, 65537)).bits == 8192


def test_rsa_exponents(rsa_key: rsa.RSAPrivateKey) -> None:
    modulus = rsa_key.public_key().public_numbers().n
    assert _rsa_spki(modulus, 65537) == spki_der_of(rsa_key)
    assert parse_spki(_rsa_spki(modulus, 3)).algorithm == "rsa"
    # cryptography refuses these while loading, before our own check runs.
    assert _reason(_rsa_spki(modulus, 4)) in {"weak_rsa", "not_der"}
    assert _reason(_rsa_spki(modulus, 1)) in {"weak_rsa", "not_der"}


def test_oversized_encoding_is_too_large() -> None:
    assert _reason(_tlv(0x30, bytes(MAX_SPKI_LEN))) == "too_large"


@pytest.mark.parametrize("curve", [ec.SECP256K1(), ec.SECP521R1(), ec.BrainpoolP256R1()])
def test_other_curves_unsupported(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    assert _reason(spki_der_of(key)) == "unsupported_curve"
    with pytest.raises(SubjectKeyError) as info:
        sign_with_private_key(key, MESSAGE)
    assert info.value.reason == "unsupported_curve"


def test_compressed_point_is_not_canonical() -> None:
    # cryptography only emits compressed points as raw X9.62, so the SPKI
    # around it is assembled by hand.
    point = P256.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    assert len(point) == 33
    assert _reason(_ec_spki(OID_P256, point)) == "not_canonical"


def test_bare_pkcs1_rsa_key_is_not_canonical(rsa_key: rsa.RSAPrivateKey) -> None:
    pkcs1 = rsa_key.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)
    assert _reason(pkcs1) == "not_canonical"


def test_other_algorithms_unsupported() -> None:
    ders = [
        spki_der_of(dsa.generate_private_key(key_size=2048)),
        spki_der_of(ed448.Ed448PrivateKey.generate().public_key()),
        spki_der_of(x25519.X25519PrivateKey.generate()),
    ]
    for der in ders:
        assert _reason(der) == "unsupported_algorithm"
    unknown_oid = _tlv(0x30, _tlv(0x30, bytes.fromhex("06032a0304")) + _tlv(0x03, b"\x00abc"))
    assert _reason(unknown_oid) == "unsupported_algorithm"


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"garbage",
        b"\x30\x00",
        SMALL_SPKIS[0][:-1],
        SMALL_SPKIS[0] + b"\x00",
        SMALL_SPKIS[1][:40],
    ],
)
def test_not_der(der: bytes) -> None:
    assert _reason(der) == "not_der"


@given(st.binary(max_size=MAX_SPKI_LEN + 8))
def test_parse_arbitrary_bytes_raises_only_subject_key_error(der: bytes) -> None:
    try:
        subject = parse_spki(der)
    except SubjectKeyError as exc:
        assert exc.reason
    else:
        assert subject.der == der
    assert verify_with_spki(der, b"\x00" * 64, MESSAGE) in {True, False}


@given(
    st.sampled_from(SMALL_SPKIS),
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(["replace", "insert", "delete", "truncate"]),
)
def test_parse_mutated_spki_raises_only_subject_key_error(
    original: bytes, position: int, value: int, how: str
) -> None:
    index = position % len(original)
    if how == "replace":
        mutated = original[:index] + bytes([value]) + original[index + 1 :]
    elif how == "insert":
        mutated = original[:index] + bytes([value]) + original[index:]
    elif how == "delete":
        mutated = original[:index] + original[index + 1 :]
    else:
        mutated = original[:index]
    try:
        subject = parse_spki(mutated)
    except SubjectKeyError as exc:
        assert exc.reason
    else:
        # Only a change inside the key material itself can survive.
        assert subject.der == mutated
        assert len(mutated) == len(original)
    assert isinstance(verify_with_spki(mutated, b"\x01" * 64, MESSAGE), bool)
