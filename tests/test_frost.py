"""FROST(Ed25519, SHA-512): RFC 9591 vectors, plain-Ed25519 compatibility,
threshold properties and the Pedersen DKG with complaints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpkid.core import frost
from dpkid.core.frost import (
    ORDER,
    DkgError,
    DkgKeyPackage,
    DkgRound1Package,
    Element,
    FrostError,
    SigningCommitment,
    SigningNonces,
)

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "frost-ed25519.json"
SETTINGS = settings(max_examples=40, deadline=None)


def load_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def scalar(hex_: str) -> int:
    return frost.deserialize_scalar(bytes.fromhex(hex_))


def element(hex_: str) -> Element:
    return frost.deserialize_element(bytes.fromhex(hex_))


def nacl_verifies(group_public_key: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(group_public_key).verify(msg, sig)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def expand(seed: bytes, label: str, n: int) -> bytes:
    """Test-side randomness: the core takes its randomness as input."""
    return hashlib.shake_256(seed + b"/" + label.encode()).digest(n)


# -- RFC 9591 Appendix E.1 -----------------------------------------------------


def test_rfc9591_vectors_byte_for_byte() -> None:
    v = load_vectors()
    assert v["config"]["name"] == "FROST(Ed25519, SHA-512)"
    inputs = v["inputs"]
    n = int(v["config"]["MAX_PARTICIPANTS"])
    t = int(v["config"]["MIN_PARTICIPANTS"])
    msg = bytes.fromhex(inputs["message"])
    group_secret = scalar(inputs["group_secret_key"])
    coeffs = [scalar(c) for c in inputs["share_polynomial_coefficients"]]

    shares, group_pk, vss = frost.trusted_dealer_keygen(group_secret, coeffs, n, t)
    assert frost.serialize_element(group_pk).hex() == inputs["group_public_key"]
    assert [(i, frost.serialize_scalar(s).hex()) for i, s in shares] == [
        (p["identifier"], p["participant_share"]) for p in inputs["participant_shares"]
    ]
    assert all(frost.vss_verify(share, vss) for share in shares)
    derived_pk, public_keys = frost.derive_group_info(n, t, vss)
    assert derived_pk == group_pk
    secret_keys = dict(shares)
    assert all(public_keys[i] == frost.scalar_base_mult(secret_keys[i]) for i in secret_keys)
    assert frost.secret_share_combine(shares[1:], t) == group_secret

    participants = inputs["participant_list"]
    nonces: dict[int, SigningNonces] = {}
    commitment_list: list[SigningCommitment] = []
    r1 = {o["identifier"]: o for o in v["round_one_outputs"]["outputs"]}
    for i in participants:
        o = r1[i]
        nonce_i, comm_i = frost.commit(
            i,
            secret_keys[i],
            bytes.fromhex(o["hiding_nonce_randomness"]),
            bytes.fromhex(o["binding_nonce_randomness"]),
        )
        assert frost.serialize_scalar(nonce_i.hiding).hex() == o["hiding_nonce"]
        assert frost.serialize_scalar(nonce_i.binding).hex() == o["binding_nonce"]
        assert frost.serialize_element(comm_i.hiding).hex() == o["hiding_nonce_commitment"]
        assert frost.serialize_element(comm_i.binding).hex() == o["binding_nonce_commitment"]
        nonces[i] = nonce_i
        commitment_list.append(comm_i)

    rho_inputs = dict(frost.binding_factor_inputs(group_pk, commitment_list, msg))
    factors = frost.compute_binding_factors(group_pk, commitment_list, msg)
    for i in participants:
        assert rho_inputs[i].hex() == r1[i]["binding_factor_input"]
        assert frost.serialize_scalar(factors[i]).hex() == r1[i]["binding_factor"]

    sig_shares = {
        i: frost.sign(i, secret_keys[i], group_pk, nonces[i], msg, commitment_list)
        for i in participants
    }
    expected_shares = {o["identifier"]: o["sig_share"] for o in v["round_two_outputs"]["outputs"]}
    assert {i: frost.serialize_scalar(z).hex() for i, z in sig_shares.items()} == expected_shares
    for i in participants:
        assert frost.verify_signature_share(
            i, public_keys[i], sig_shares[i], commitment_list, group_pk, msg
        )

    sig = frost.aggregate(commitment_list, msg, group_pk, sig_shares)
    assert sig.hex() == v["final_output"]["sig"]
    assert frost.verify_signature(bytes(group_pk), msg, sig)
    # The threshold signature is an ordinary Ed25519 signature.
    assert nacl_verifies(bytes(group_pk), msg, sig)
    assert not nacl_verifies(bytes(group_pk), msg + b"!", sig)


def test_ciphersuite_hashes_are_domain_separated_as_specified() -> None:
    m = b"m"
    assert (
        frost.h1(m)
        == int.from_bytes(hashlib.sha512(b"FROST-ED25519-SHA512-v1rho" + m).digest(), "little")
        % ORDER
    )
    assert frost.h2(m) == int.from_bytes(hashlib.sha512(m).digest(), "little") % ORDER
    assert frost.h4(m) == hashlib.sha512(b"FROST-ED25519-SHA512-v1msg" + m).digest()
    assert frost.h5(m) == hashlib.sha512(b"FROST-ED25519-SHA512-v1com" + m).digest()


def test_single_key_signature_matches_rfc8032_challenge() -> None:
    """compute_challenge is RFC 8032's: a FROST 1-of-1 'signature' built by
    hand from a libsodium key verifies under libsodium and under ours."""
    seed = bytes(range(32))
    sk = nacl.signing.SigningKey(seed)
    digest = hashlib.sha512(seed).digest()
    a = bytearray(digest[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    secret = int.from_bytes(a, "little") % ORDER
    pk = frost.scalar_base_mult(secret)
    assert bytes(pk) == bytes(sk.verify_key)
    r = frost.random_scalar(bytes(64 * [7]))
    big_r = frost.scalar_base_mult(r)
    msg = b"hello"
    z = (r + frost.compute_challenge(big_r, pk, msg) * secret) % ORDER
    sig = frost.serialize_element(big_r) + frost.serialize_scalar(z)
    assert nacl_verifies(bytes(pk), msg, sig)
    assert frost.verify_signature(bytes(pk), msg, sig)
    assert frost.verify_signature(bytes(pk), msg, sk.sign(msg).signature)


# -- encodings -----------------------------------------------------------------

SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
]


@pytest.mark.parametrize("hex_", SMALL_ORDER)
def test_deserialize_element_rejects_identity_small_order_and_noncanonical(hex_: str) -> None:
    with pytest.raises(FrostError):
        frost.deserialize_element(bytes.fromhex(hex_))


def test_deserialize_element_rejects_points_outside_the_prime_order_subgroup() -> None:
    base = frost.scalar_base_mult(1)
    mixed = frost.element_add(base, Element(bytes.fromhex(SMALL_ORDER[1])))
    with pytest.raises(FrostError):
        frost.deserialize_element(mixed)
    assert frost.deserialize_element(bytes(base)) == base
    with pytest.raises(FrostError):
        frost.deserialize_element(bytes(base)[:31])
    with pytest.raises(FrostError):
        frost.serialize_element(frost.IDENTITY)


def test_scalars_must_be_reduced() -> None:
    assert frost.deserialize_scalar((ORDER - 1).to_bytes(32, "little")) == ORDER - 1
    with pytest.raises(FrostError):
        frost.deserialize_scalar(ORDER.to_bytes(32, "little"))
    with pytest.raises(FrostError):
        frost.serialize_scalar(ORDER)


@given(st.integers(0, ORDER - 1), st.integers(0, ORDER - 1))
@settings(max_examples=30, deadline=None)
def test_group_arithmetic_is_linear_including_the_identity(a: int, b: int) -> None:
    pa, pb = frost.scalar_base_mult(a), frost.scalar_base_mult(b)
    assert frost.element_add(pa, pb) == frost.scalar_base_mult(a + b)
    assert frost.element_sub(pa, pb) == frost.scalar_base_mult(a - b)
    assert frost.scalar_mult(frost.scalar_base_mult(1), a) == pa
    assert frost.scalar_mult(pa, b) == frost.scalar_base_mult(a * b)
    assert frost.scalar_mult(pa, 0) == frost.IDENTITY
    assert frost.element_add(pa, frost.IDENTITY) == pa


# -- threshold signing properties ----------------------------------------------


def dealer_keys(seed: bytes, n: int, t: int) -> tuple[dict[int, int], Element, dict[int, Element]]:
    secret = frost.random_scalar(expand(seed, "secret", 64)) or 1
    coeffs = [frost.random_scalar(expand(seed, f"coeff{k}", 64)) for k in range(t - 1)]
    shares, group_pk, vss = frost.trusted_dealer_keygen(secret, coeffs, n, t)
    assert all(frost.vss_verify(s, vss) for s in shares)
    _, public_keys = frost.derive_group_info(n, t, vss)
    return dict(shares), group_pk, public_keys


def run_signing(
    seed: bytes,
    signers: Sequence[int],
    secret_keys: Mapping[int, int],
    group_pk: Element,
    msg: bytes,
) -> tuple[list[SigningCommitment], dict[int, int]]:
    nonces: dict[int, SigningNonces] = {}
    commitment_list = []
    for i in sorted(signers):
        nonce_i, comm_i = frost.commit(
            i, secret_keys[i], expand(seed, f"h{i}", 32), expand(seed, f"b{i}", 32)
        )
        nonces[i] = nonce_i
        commitment_list.append(comm_i)
    shares = {
        i: frost.sign(i, secret_keys[i], group_pk, nonces[i], msg, commitment_list)
        for i in sorted(signers)
    }
    return commitment_list, shares


@st.composite
def threshold_setup(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    n = draw(st.integers(1, 5))
    t = draw(st.integers(1, n))
    k = draw(st.integers(t, n))
    signers = draw(st.permutations(list(range(1, n + 1))))[:k]
    return n, t, signers


@given(threshold_setup(), st.binary(min_size=16, max_size=16), st.binary(max_size=64))
@SETTINGS
def test_any_threshold_subset_signs_and_verifies_as_ed25519(
    setup: tuple[int, int, list[int]], seed: bytes, msg: bytes
) -> None:
    n, t, signers = setup
    secret_keys, group_pk, public_keys = dealer_keys(seed, n, t)
    commitment_list, shares = run_signing(seed, signers, secret_keys, group_pk, msg)
    sig = frost.aggregate(commitment_list, msg, group_pk, shares)
    assert nacl_verifies(bytes(group_pk), msg, sig)
    assert frost.verify_signature(bytes(group_pk), msg, sig)
    assert frost.identify_misbehaving(commitment_list, msg, group_pk, shares, public_keys) == []


@given(st.integers(2, 5), st.data(), st.binary(min_size=16, max_size=16))
@SETTINGS
def test_fewer_than_threshold_cannot_sign(n: int, data: st.DataObject, seed: bytes) -> None:
    t = data.draw(st.integers(2, n))
    signers = data.draw(st.permutations(list(range(1, n + 1))))[: t - 1]
    secret_keys, group_pk, _ = dealer_keys(seed, n, t)
    msg = b"too few"
    commitment_list, shares = run_signing(seed, signers, secret_keys, group_pk, msg)
    sig = frost.aggregate(commitment_list, msg, group_pk, shares)
    assert not nacl_verifies(bytes(group_pk), msg, sig)
    assert not frost.verify_signature(bytes(group_pk), msg, sig)


@given(threshold_setup(), st.data(), st.binary(min_size=16, max_size=16))
@SETTINGS
def test_a_tampered_share_is_attributed_to_its_signer(
    setup: tuple[int, int, list[int]], data: st.DataObject, seed: bytes
) -> None:
    n, t, signers = setup
    cheater = data.draw(st.sampled_from(signers))
    delta = data.draw(st.integers(1, ORDER - 1))
    secret_keys, group_pk, public_keys = dealer_keys(seed, n, t)
    msg = b"cheat"
    commitment_list, shares = run_signing(seed, signers, secret_keys, group_pk, msg)
    shares[cheater] = (shares[cheater] + delta) % ORDER
    sig = frost.aggregate(commitment_list, msg, group_pk, shares)
    assert not nacl_verifies(bytes(group_pk), msg, sig)
    for i in signers:
        ok = frost.verify_signature_share(
            i, public_keys[i], shares[i], commitment_list, group_pk, msg
        )
        assert ok == (i != cheater)
    assert frost.identify_misbehaving(commitment_list, msg, group_pk, shares, public_keys) == [
        cheater
    ]


def test_signer_refuses_a_commitment_list_without_its_own_commitment() -> None:
    secret_keys, group_pk, _ = dealer_keys(b"s", 3, 2)
    n1, c1 = frost.commit(1, secret_keys[1], bytes(32), bytes([1]) * 32)
    _, c2 = frost.commit(2, secret_keys[2], bytes([2]) * 32, bytes([3]) * 32)
    swapped = SigningCommitment(1, c1.binding, c1.hiding)
    with pytest.raises(FrostError):
        frost.sign(1, secret_keys[1], group_pk, n1, b"m", [swapped, c2])
    with pytest.raises(FrostError):
        frost.sign(1, secret_keys[1], group_pk, n1, b"m", [c2, c1])  # unsorted
    with pytest.raises(FrostError):
        frost.sign(1, secret_keys[1], group_pk, n1, b"m", [c2])  # absent
    with pytest.raises(FrostError):
        frost.aggregate([c1, c2], b"m", group_pk, {1: 1})  # a share missing


def test_interpolation_rejects_duplicates_and_outsiders() -> None:
    with pytest.raises(FrostError):
        frost.derive_interpolating_value([1, 2, 2], 1)
    with pytest.raises(FrostError):
        frost.derive_interpolating_value([1, 2], 3)
    with pytest.raises(FrostError):
        frost.derive_interpolating_value([0, 2], 2)


@given(st.integers(1, 6), st.data())
@settings(max_examples=30, deadline=None)
def test_any_threshold_of_shamir_shares_recovers_the_secret(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    secret = data.draw(st.integers(1, ORDER - 1))
    coeffs = data.draw(st.lists(st.integers(0, ORDER - 1), min_size=t - 1, max_size=t - 1))
    shares, _ = frost.secret_share_shard(secret, coeffs, n)
    subset = data.draw(st.permutations(shares))[: data.draw(st.integers(t, n))]
    assert frost.secret_share_combine(subset, t) == secret


# -- DKG -----------------------------------------------------------------------

CONTEXT = b"dpkid-test/dkg/epoch-7"


def dkg_round1_all(
    seed: bytes, n: int, t: int, context: bytes = CONTEXT
) -> tuple[dict[int, frost.DkgSecretPackage], dict[int, DkgRound1Package]]:
    secrets: dict[int, frost.DkgSecretPackage] = {}
    packages: dict[int, DkgRound1Package] = {}
    for i in range(1, n + 1):
        coeffs = [frost.random_scalar(expand(seed, f"p{i}c{k}", 64)) or 1 for k in range(t)]
        secrets[i], packages[i] = frost.dkg_round1(
            i, t, n, context, coeffs, expand(seed, f"p{i}pok", 32)
        )
    return secrets, packages


def dkg_round2_all(
    secrets: Mapping[int, frost.DkgSecretPackage], packages: Mapping[int, DkgRound1Package]
) -> dict[int, dict[int, int]]:
    """inbox[recipient][dealer] = f_dealer(recipient)."""
    inbox: dict[int, dict[int, int]] = {i: {} for i in secrets}
    for dealer, secret in secrets.items():
        for recipient, share in frost.dkg_round2(secret, packages).items():
            inbox[recipient][dealer] = share
    return inbox


@st.composite
def dkg_setup(draw: st.DrawFn) -> tuple[int, int, bytes]:
    n = draw(st.integers(2, 5))
    t = draw(st.integers(1, n))
    return n, t, draw(st.binary(min_size=16, max_size=16))


@given(dkg_setup(), st.data())
@settings(max_examples=25, deadline=None)
def test_dkg_participants_agree_and_any_threshold_signs(
    setup: tuple[int, int, bytes], data: st.DataObject
) -> None:
    n, t, seed = setup
    secrets, packages = dkg_round1_all(seed, n, t)
    inbox = dkg_round2_all(secrets, packages)
    keys: dict[int, DkgKeyPackage] = {
        i: frost.dkg_finalize(secrets[i], packages, inbox[i]) for i in secrets
    }
    group_pk = keys[1].group_public_key
    assert all(k.group_public_key == group_pk for k in keys.values())
    assert all(k.verifying_shares == keys[1].verifying_shares for k in keys.values())
    # Anyone can derive the same public data from the broadcast packages alone.
    assert frost.dkg_group_info(packages, n) == (group_pk, dict(keys[1].verifying_shares))
    contributions = sum(s.coefficients[0] for s in secrets.values())
    assert group_pk == frost.scalar_base_mult(contributions)
    for i, k in keys.items():
        assert k.verifying_shares[i] == frost.scalar_base_mult(k.signing_share)

    signers = data.draw(st.permutations(list(range(1, n + 1))))[: data.draw(st.integers(t, n))]
    msg = b"certificate tbs bytes"
    secret_keys = {i: k.signing_share for i, k in keys.items()}
    commitment_list, shares = run_signing(seed, signers, secret_keys, group_pk, msg)
    sig = frost.aggregate(commitment_list, msg, group_pk, shares)
    assert nacl_verifies(frost.serialize_element(group_pk), msg, sig)
    assert (
        frost.identify_misbehaving(commitment_list, msg, group_pk, shares, keys[1].verifying_shares)
        == []
    )


@given(dkg_setup(), st.data())
@settings(max_examples=25, deadline=None)
def test_dkg_bad_share_is_caught_and_honest_dealers_never_are(
    setup: tuple[int, int, bytes], data: st.DataObject
) -> None:
    n, t, seed = setup
    secrets, packages = dkg_round1_all(seed, n, t)
    inbox = dkg_round2_all(secrets, packages)
    # Complaints against honest dealers always fail, for every share sent.
    for recipient, received in inbox.items():
        for dealer, share in received.items():
            assert not frost.complaint_is_valid(
                packages[dealer].commitment, recipient, frost.serialize_scalar(share)
            )
    dealer = data.draw(st.integers(1, n))
    recipient = data.draw(st.sampled_from([i for i in range(1, n + 1) if i != dealer]))
    delta = data.draw(st.integers(1, ORDER - 1))
    bad = (inbox[recipient][dealer] + delta) % ORDER
    inbox[recipient][dealer] = bad
    with pytest.raises(DkgError) as caught:
        frost.dkg_finalize(secrets[recipient], packages, inbox[recipient])
    assert caught.value.culprits == (dealer,)
    assert frost.complaint_is_valid(
        packages[dealer].commitment, recipient, frost.serialize_scalar(bad)
    )
    if t > 1:
        # Another recipient's share is not this recipient's (a constant
        # polynomial, t = 1, gives everyone the same share).
        other_share = frost.polynomial_evaluate(dealer, secrets[dealer].coefficients)
        assert frost.complaint_is_valid(
            packages[dealer].commitment, recipient, frost.serialize_scalar(other_share)
        )
    # Everyone else still finalises.
    for i in secrets:
        if i != recipient:
            frost.dkg_finalize(secrets[i], packages, inbox[i])


def test_complaint_with_a_malformed_share_is_valid_and_bad_recipients_are_not() -> None:
    _, packages = dkg_round1_all(b"m", 3, 2)
    commitment = packages[1].commitment
    assert frost.complaint_is_valid(commitment, 2, ORDER.to_bytes(32, "little"))
    assert frost.complaint_is_valid(commitment, 2, b"short")
    assert not frost.complaint_is_valid(commitment, 0, bytes(32))
    with pytest.raises(FrostError):
        frost.complaint_is_valid([frost.IDENTITY], 2, bytes(32))


@given(st.binary(min_size=16, max_size=16), st.integers(0, 4))
@settings(max_examples=10, deadline=None)
def test_dkg_bad_proof_of_knowledge_is_rejected(seed: bytes, how: int) -> None:
    n, t = 3, 2
    secrets, packages = dkg_round1_all(seed, n, t)
    assert all(frost.dkg_verify_round1(p, CONTEXT, t) for p in packages.values())
    victim = packages[2]
    forged: DkgRound1Package
    if how == 0:
        forged = replace(victim, proof_mu=(victim.proof_mu + 1) % ORDER)
    elif how == 1:
        forged = replace(
            victim, proof_r=frost.element_add(victim.proof_r, frost.scalar_base_mult(1))
        )
    elif how == 2:
        # A rogue key: someone else's constant term without knowing its logarithm.
        other = packages[3].commitment[0]
        forged = replace(victim, commitment=(other, *victim.commitment[1:]))
    elif how == 3:
        forged = replace(victim, commitment=victim.commitment[:1])  # wrong degree
    else:
        forged = replace(victim, proof_mu=ORDER)  # unreduced
    assert not frost.dkg_verify_round1(forged, CONTEXT, t)
    with pytest.raises(DkgError) as caught:
        frost.dkg_round2(secrets[1], {**packages, 2: forged})
    assert caught.value.culprits == (2,)


def test_dkg_proof_is_bound_to_context_and_identifier() -> None:
    secrets, packages = dkg_round1_all(b"ctx", 3, 2)
    p = packages[2]
    assert frost.dkg_verify_round1(p, CONTEXT, 2)
    assert not frost.dkg_verify_round1(p, CONTEXT + b"-replayed", 2)
    # Participant 3 replaying 2's package under its own name.
    assert not frost.dkg_verify_round1(replace(p, identifier=3), CONTEXT, 2)
    with pytest.raises(DkgError) as caught:
        frost.dkg_round2(secrets[1], {**packages, 3: replace(p, identifier=3)})
    assert caught.value.culprits == (3,)


def test_dkg_is_deterministic_given_its_random_inputs() -> None:
    a = dkg_round1_all(b"same", 3, 2)
    b = dkg_round1_all(b"same", 3, 2)
    assert a == b
    assert dkg_round2_all(*a) == dkg_round2_all(*b)
    assert dkg_round1_all(b"other", 3, 2)[1] != a[1]


def test_dkg_requires_every_package_and_share() -> None:
    secrets, packages = dkg_round1_all(b"all", 3, 2)
    inbox = dkg_round2_all(secrets, packages)
    with pytest.raises(DkgError) as caught:
        frost.dkg_round2(secrets[1], {i: p for i, p in packages.items() if i != 3})
    assert caught.value.culprits == (3,)
    with pytest.raises(DkgError) as caught:
        frost.dkg_finalize(secrets[1], packages, {2: inbox[1][2]})
    assert caught.value.culprits == (3,)
