"""FROST(Ed25519, SHA-512) threshold signatures (RFC 9591) and a Pedersen DKG.

The signing half follows RFC 9591 function by function (names and argument
order match the RFC's pseudocode), so the RFC's test vectors reproduce byte
for byte, and the aggregate signature is a plain RFC 8032 Ed25519 signature
that any Ed25519 verifier accepts.  Key generation comes in two flavours:
the RFC's trusted dealer (Appendix C: Shamir shares with Feldman VSS
commitments) and the DKG of Komlo & Goldberg, "FROST: Flexible Round-Optimized
Schnorr Threshold Signatures" (SAC 2020), Figure 1: Pedersen's DKG where every
dealer also proves knowledge of its constant term, which stops rogue-key
attacks.

Pure: every random value comes in as bytes or scalars from the caller, so
the same inputs always give the same outputs.

Representation.  A scalar is a Python ``int`` in ``[0, ORDER)``; Python's
integers make the field arithmetic exact and readable, and the group work
(the part that needs a real curve implementation) goes to libsodium.  An
``Element`` is the canonical 32-byte RFC 8032 encoding of a point in the
prime-order subgroup; because the encoding is canonical, two elements are equal
exactly when their bytes are.  This module does not try to be constant-time:
CPython integers are not, so keep that in mind before signing where an attacker
can time the process.

The identity.  RFC 9591 needs the identity element internally (the sums in
``compute_group_commitment`` and ``vss_verify`` start from it), but libsodium's
``crypto_scalarmult_ed25519*`` refuse a zero scalar, an identity input and an
identity result.  ``scalar_mult`` and ``scalar_base_mult`` therefore answer the
zero-scalar and identity-input cases themselves (both give the identity); for
any other input the point is in the prime-order subgroup and the scalar is
non-zero modulo the order, so the product cannot be the identity and libsodium
accepts it.  ``crypto_core_ed25519_add``/``sub`` take and give the identity
without complaint.  As the RFC says, the identity can never be serialized or
deserialized: it exists only inside computations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NewType

import nacl.bindings as sodium

CONTEXT_STRING: Final = b"FROST-ED25519-SHA512-v1"
ORDER: Final = 2**252 + 27742317777372353535851937790883648493
SCALAR_LEN: Final = 32
ELEMENT_LEN: Final = 32
SIGNATURE_LEN: Final = 64
NONCE_RANDOMNESS_LEN: Final = 32
# 64 bytes reduced modulo the order: the bias is below 2^-250 (RFC 9591
# Appendix D "wide reduction" needs at least 48).
RANDOM_SCALAR_LEN: Final = 64

Element = NewType("Element", bytes)
IDENTITY: Final = Element(b"\x01" + bytes(31))


class FrostError(ValueError):
    """Invalid input or parameters (the RFC's "invalid parameters" and kin)."""


class DkgError(FrostError):
    """A DKG step failed because of the named participants' messages."""

    def __init__(self, message: str, culprits: Iterable[int]) -> None:
        self.culprits: tuple[int, ...] = tuple(sorted(culprits))
        super().__init__(f"{message}: {list(self.culprits)}")


# -- the group: edwards25519 through libsodium ---------------------------------


def _scalar_bytes(k: int) -> bytes:
    return (k % ORDER).to_bytes(SCALAR_LEN, "little")


def scalar_base_mult(k: int) -> Element:
    k %= ORDER
    if k == 0:
        return IDENTITY
    return Element(bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(_scalar_bytes(k))))


def scalar_mult(p: Element, k: int) -> Element:
    """k*P for P in the prime-order subgroup (every Element is)."""
    k %= ORDER
    if k == 0 or p == IDENTITY:
        return IDENTITY
    return Element(bytes(sodium.crypto_scalarmult_ed25519_noclamp(_scalar_bytes(k), p)))


def element_add(a: Element, b: Element) -> Element:
    return Element(bytes(sodium.crypto_core_ed25519_add(a, b)))


def element_sub(a: Element, b: Element) -> Element:
    return Element(bytes(sodium.crypto_core_ed25519_sub(a, b)))


def _is_valid_element(buf: bytes) -> bool:
    # libsodium's check is exactly RFC 9591's DeserializeElement for this suite:
    # canonical RFC 8032 encoding, on the curve, not of small order (so not the
    # identity) and in the prime-order subgroup.
    return len(buf) == ELEMENT_LEN and bool(sodium.crypto_core_ed25519_is_valid_point(buf))


def serialize_element(a: Element) -> bytes:
    if a == IDENTITY:
        raise FrostError("the identity element cannot be serialized")
    return bytes(a)


def deserialize_element(buf: bytes) -> Element:
    if not _is_valid_element(buf):
        raise FrostError("not the encoding of a non-identity prime-order element")
    return Element(bytes(buf))


def serialize_scalar(s: int) -> bytes:
    if not 0 <= s < ORDER:
        raise FrostError("scalar out of range")
    return s.to_bytes(SCALAR_LEN, "little")


def deserialize_scalar(buf: bytes) -> int:
    if len(buf) != SCALAR_LEN:
        raise FrostError(f"a scalar is {SCALAR_LEN} bytes")
    s = int.from_bytes(buf, "little")
    if s >= ORDER:
        raise FrostError("scalar encoding is not reduced")
    return s


def random_scalar(random_bytes: bytes) -> int:
    """A uniform scalar from caller-supplied randomness (RFC 9591 Appendix D.2)."""
    if len(random_bytes) != RANDOM_SCALAR_LEN:
        raise FrostError(f"random_scalar takes {RANDOM_SCALAR_LEN} random bytes")
    return int.from_bytes(random_bytes, "little") % ORDER


def _check_identifier(i: int) -> None:
    if not 0 < i < ORDER:
        raise FrostError(f"identifier {i} is not a non-zero scalar")


def _check_scalar(s: int) -> None:
    if not 0 <= s < ORDER:
        raise FrostError("scalar out of range")


# -- the ciphersuite hashes (RFC 9591 §6.1) ------------------------------------


def _sha512(*parts: bytes) -> bytes:
    return hashlib.sha512(b"".join(parts)).digest()


def _reduce(digest: bytes) -> int:
    return int.from_bytes(digest, "little") % ORDER


def h1(m: bytes) -> int:
    return _reduce(_sha512(CONTEXT_STRING, b"rho", m))


def h2(m: bytes) -> int:
    # No context string: this is RFC 8032's challenge hash, which is what makes
    # the aggregate an ordinary Ed25519 signature.
    return _reduce(_sha512(m))


def h3(m: bytes) -> int:
    return _reduce(_sha512(CONTEXT_STRING, b"nonce", m))


def h4(m: bytes) -> bytes:
    return _sha512(CONTEXT_STRING, b"msg", m)


def h5(m: bytes) -> bytes:
    return _sha512(CONTEXT_STRING, b"com", m)


def h_dkg(m: bytes) -> int:
    """The DKG's proof-of-knowledge challenge hash (not in RFC 9591; the tag
    "dkg" follows the Zcash Foundation's FROST implementation)."""
    return _reduce(_sha512(CONTEXT_STRING, b"dkg", m))


# -- helpers (RFC 9591 §4) -----------------------------------------------------


def nonce_generate(secret: int, random_bytes: bytes) -> int:
    """RFC 9591 §4.1. Mixing the secret in hedges against a weak RNG; the
    randomness is the caller's because the core draws none."""
    if len(random_bytes) != NONCE_RANDOMNESS_LEN:
        raise FrostError(f"nonce_generate takes {NONCE_RANDOMNESS_LEN} random bytes")
    return h3(random_bytes + serialize_scalar(secret))


def polynomial_evaluate(x: int, coeffs: Sequence[int]) -> int:
    value = 0
    for coeff in reversed(coeffs):
        value = (value * x + coeff) % ORDER
    return value


def derive_interpolating_value(x_coords: Sequence[int], x_i: int) -> int:
    """The Lagrange coefficient of x_i at 0 over x_coords (RFC 9591 §4.2)."""
    for x in x_coords:
        _check_identifier(x)
    if x_i not in x_coords or len(set(x_coords)) != len(x_coords):
        raise FrostError("invalid parameters")
    numerator = 1
    denominator = 1
    for x_j in x_coords:
        if x_j == x_i:
            continue
        numerator = numerator * x_j % ORDER
        denominator = denominator * (x_j - x_i) % ORDER
    return numerator * pow(denominator, -1, ORDER) % ORDER


def polynomial_interpolate_constant(points: Sequence[tuple[int, int]]) -> int:
    x_coords = [x for x, _ in points]
    f_zero = 0
    for x, y in points:
        f_zero = (f_zero + y * derive_interpolating_value(x_coords, x)) % ORDER
    return f_zero


@dataclass(frozen=True, slots=True)
class SigningNonces:
    """Round-one secret state. Use once, then delete (RFC 9591 §5.2)."""

    hiding: int
    binding: int


@dataclass(frozen=True, slots=True)
class SigningCommitment:
    """One entry of the RFC's commitment_list."""

    identifier: int
    hiding: Element
    binding: Element


def _check_commitment_list(commitment_list: Sequence[SigningCommitment]) -> None:
    if not commitment_list:
        raise FrostError("empty commitment list")
    previous = 0
    for c in commitment_list:
        _check_identifier(c.identifier)
        # Strictly ascending: the RFC requires the order, and it also rules
        # out a participant appearing twice.
        if c.identifier <= previous:
            raise FrostError("commitment list must be sorted by identifier, without repeats")
        previous = c.identifier
        if not (_is_valid_element(c.hiding) and _is_valid_element(c.binding)):
            raise FrostError(f"participant {c.identifier} sent an invalid commitment")


def participants_from_commitment_list(commitment_list: Sequence[SigningCommitment]) -> list[int]:
    return [c.identifier for c in commitment_list]


def encode_group_commitment_list(commitment_list: Sequence[SigningCommitment]) -> bytes:
    return b"".join(
        serialize_scalar(c.identifier) + serialize_element(c.hiding) + serialize_element(c.binding)
        for c in commitment_list
    )


def binding_factor_inputs(
    group_public_key: Element, commitment_list: Sequence[SigningCommitment], msg: bytes
) -> list[tuple[int, bytes]]:
    """The rho_input of every participant (the RFC vectors list them)."""
    prefix = (
        serialize_element(group_public_key)
        + h4(msg)
        + h5(encode_group_commitment_list(commitment_list))
    )
    return [(c.identifier, prefix + serialize_scalar(c.identifier)) for c in commitment_list]


def compute_binding_factors(
    group_public_key: Element, commitment_list: Sequence[SigningCommitment], msg: bytes
) -> dict[int, int]:
    """RFC 9591 §4.4, as identifier -> binding factor."""
    return {
        i: h1(rho_input)
        for i, rho_input in binding_factor_inputs(group_public_key, commitment_list, msg)
    }


def compute_group_commitment(
    commitment_list: Sequence[SigningCommitment], binding_factors: Mapping[int, int]
) -> Element:
    group_commitment = IDENTITY
    for c in commitment_list:
        if c.identifier not in binding_factors:
            raise FrostError("invalid participant")
        binding_nonce = scalar_mult(c.binding, binding_factors[c.identifier])
        group_commitment = element_add(element_add(group_commitment, c.hiding), binding_nonce)
    return group_commitment


def compute_challenge(group_commitment: Element, group_public_key: Element, msg: bytes) -> int:
    """RFC 9591 §4.6; for this suite it is exactly RFC 8032's k = SHA-512(R || A || M)."""
    return h2(serialize_element(group_commitment) + serialize_element(group_public_key) + msg)


# -- signing (RFC 9591 §5) -----------------------------------------------------


def commit(
    identifier: int,
    secret_key_i: int,
    hiding_nonce_randomness: bytes,
    binding_nonce_randomness: bytes,
) -> tuple[SigningNonces, SigningCommitment]:
    """Round one. The identifier is not in the RFC's commit(); taking it here
    lets the result go straight into a commitment list."""
    _check_identifier(identifier)
    _check_scalar(secret_key_i)
    nonces = SigningNonces(
        nonce_generate(secret_key_i, hiding_nonce_randomness),
        nonce_generate(secret_key_i, binding_nonce_randomness),
    )
    comm = SigningCommitment(
        identifier, scalar_base_mult(nonces.hiding), scalar_base_mult(nonces.binding)
    )
    return nonces, comm


def _commitment_of(
    commitment_list: Sequence[SigningCommitment], identifier: int
) -> SigningCommitment:
    for c in commitment_list:
        if c.identifier == identifier:
            return c
    raise FrostError("invalid participant")


def sign(
    identifier: int,
    secret_key_i: int,
    group_public_key: Element,
    nonce_i: SigningNonces,
    msg: bytes,
    commitment_list: Sequence[SigningCommitment],
) -> int:
    """Round two: this participant's signature share z_i."""
    _check_scalar(secret_key_i)
    _check_commitment_list(commitment_list)
    # RFC 9591 §5.2: a signer must find its own round-one commitment in the
    # list, or a coordinator could make it sign under someone else's nonces.
    own = _commitment_of(commitment_list, identifier)
    if (own.hiding, own.binding) != (
        scalar_base_mult(nonce_i.hiding),
        scalar_base_mult(nonce_i.binding),
    ):
        raise FrostError("commitment list does not hold this signer's commitment")
    binding_factors = compute_binding_factors(group_public_key, commitment_list, msg)
    group_commitment = compute_group_commitment(commitment_list, binding_factors)
    lambda_i = derive_interpolating_value(
        participants_from_commitment_list(commitment_list), identifier
    )
    challenge = compute_challenge(group_commitment, group_public_key, msg)
    return (
        nonce_i.hiding
        + nonce_i.binding * binding_factors[identifier]
        + lambda_i * secret_key_i * challenge
    ) % ORDER


def aggregate(
    commitment_list: Sequence[SigningCommitment],
    msg: bytes,
    group_public_key: Element,
    sig_shares: Mapping[int, int],
) -> bytes:
    """The 64-byte signature R || z (RFC 9591 §5.3 and Appendix A).

    Shares are keyed by identifier and must be exactly those of the
    commitment list: a missing or extra share is a coordinator bug, not a
    signature.  Check the result with verify_signature before releasing it.
    """
    _check_commitment_list(commitment_list)
    if set(sig_shares) != set(participants_from_commitment_list(commitment_list)):
        raise FrostError("signature shares do not match the commitment list")
    binding_factors = compute_binding_factors(group_public_key, commitment_list, msg)
    group_commitment = compute_group_commitment(commitment_list, binding_factors)
    z = 0
    for z_i in sig_shares.values():
        _check_scalar(z_i)
        z = (z + z_i) % ORDER
    return serialize_element(group_commitment) + serialize_scalar(z)


def verify_signature_share(
    identifier: int,
    public_key_i: Element,
    sig_share_i: int,
    commitment_list: Sequence[SigningCommitment],
    group_public_key: Element,
    msg: bytes,
) -> bool:
    """RFC 9591 §5.4. The RFC also passes comm_i; here it is read from
    commitment_list, the same list the binding factors are computed over."""
    _check_commitment_list(commitment_list)
    comm_i = _commitment_of(commitment_list, identifier)
    if not 0 <= sig_share_i < ORDER:
        return False
    # libsodium would throw on a point outside the subgroup; such a key
    # verifies nothing.
    if public_key_i != IDENTITY and not _is_valid_element(public_key_i):
        return False
    binding_factors = compute_binding_factors(group_public_key, commitment_list, msg)
    group_commitment = compute_group_commitment(commitment_list, binding_factors)
    comm_share = element_add(
        comm_i.hiding, scalar_mult(comm_i.binding, binding_factors[identifier])
    )
    challenge = compute_challenge(group_commitment, group_public_key, msg)
    lambda_i = derive_interpolating_value(
        participants_from_commitment_list(commitment_list), identifier
    )
    lhs = scalar_base_mult(sig_share_i)
    rhs = element_add(comm_share, scalar_mult(public_key_i, challenge * lambda_i))
    return lhs == rhs


def identify_misbehaving(
    commitment_list: Sequence[SigningCommitment],
    msg: bytes,
    group_public_key: Element,
    sig_shares: Mapping[int, int],
    public_keys: Mapping[int, Element],
) -> list[int]:
    """Identifiers whose share fails verify_signature_share (RFC 9591 §5.4),
    ascending; meant for after a failed aggregate verification."""
    return sorted(
        i
        for i, z_i in sig_shares.items()
        if not verify_signature_share(
            i, public_keys[i], z_i, commitment_list, group_public_key, msg
        )
    )


def verify_signature(group_public_key: bytes, msg: bytes, signature: bytes) -> bool:
    """RFC 8032 verification with RFC 9591's cofactored equation.

    R and the key are decoded into the prime-order subgroup, where
    multiplying by the cofactor 8 is injective, so [8][z]B = [8]R + [8][c]PK
    holds exactly when [z]B = R + [c]PK does.
    """
    if len(signature) != SIGNATURE_LEN:
        return False
    try:
        pk = deserialize_element(group_public_key)
        r = deserialize_element(signature[:ELEMENT_LEN])
        z = deserialize_scalar(signature[ELEMENT_LEN:])
    except FrostError:
        return False
    c = compute_challenge(r, pk, msg)
    return scalar_base_mult(z) == element_add(r, scalar_mult(pk, c))


# -- trusted dealer (RFC 9591 Appendix C) --------------------------------------


def _check_thresholds(min_participants: int, max_participants: int) -> None:
    if not 1 <= min_participants <= max_participants < ORDER:
        raise FrostError("need 1 <= MIN_PARTICIPANTS <= MAX_PARTICIPANTS < order")


def secret_share_shard(
    s: int, coefficients: Sequence[int], max_participants: int
) -> tuple[list[tuple[int, int]], list[int]]:
    _check_scalar(s)
    for a in coefficients:
        _check_scalar(a)
    if not 1 <= max_participants < ORDER:
        raise FrostError("invalid parameters")
    coeffs = [s, *coefficients]
    shares = [(x, polynomial_evaluate(x, coeffs)) for x in range(1, max_participants + 1)]
    return shares, coeffs


def secret_share_combine(shares: Sequence[tuple[int, int]], min_participants: int) -> int:
    if len(shares) < min_participants:
        raise FrostError("invalid parameters")
    return polynomial_interpolate_constant(shares)


def vss_commit(coeffs: Sequence[int]) -> list[Element]:
    return [scalar_base_mult(a) for a in coeffs]


def derive_public_point(vss_commitment: Sequence[Element], i: int) -> Element:
    """sum_j C_j * i^j: the public image of the committed polynomial at i."""
    point = IDENTITY
    power = 1
    for comm_j in vss_commitment:
        point = element_add(point, scalar_mult(comm_j, power))
        power = power * i % ORDER
    return point


def vss_verify(share_i: tuple[int, int], vss_commitment: Sequence[Element]) -> bool:
    i, secret_key_i = share_i
    _check_identifier(i)
    if not 0 <= secret_key_i < ORDER:
        return False
    return scalar_base_mult(secret_key_i) == derive_public_point(vss_commitment, i)


def derive_group_info(
    max_participants: int, min_participants: int, vss_commitment: Sequence[Element]
) -> tuple[Element, dict[int, Element]]:
    """The group public key and public_key_i of every i in 1..MAX_PARTICIPANTS."""
    _check_thresholds(min_participants, max_participants)
    if len(vss_commitment) != min_participants:
        raise FrostError("a VSS commitment has MIN_PARTICIPANTS elements")
    public_keys = {
        i: derive_public_point(vss_commitment, i) for i in range(1, max_participants + 1)
    }
    return vss_commitment[0], public_keys


def trusted_dealer_keygen(
    secret_key: int,
    coefficients: Sequence[int],
    max_participants: int,
    min_participants: int,
) -> tuple[list[tuple[int, int]], Element, list[Element]]:
    """Shares (i, s_i) for i = 1..MAX_PARTICIPANTS, the group public key and
    the VSS commitment.  The RFC draws the MIN_PARTICIPANTS - 1 coefficients
    inside; here the caller passes them (e.g. from random_scalar)."""
    _check_thresholds(min_participants, max_participants)
    if len(coefficients) != min_participants - 1:
        raise FrostError("need MIN_PARTICIPANTS - 1 coefficients")
    # A zero secret would make the group key the identity, which has no encoding.
    if not 0 < secret_key < ORDER:
        raise FrostError("the group secret must be a non-zero scalar")
    shares, coeffs = secret_share_shard(secret_key, coefficients, max_participants)
    vss_commitment = vss_commit(coeffs)
    return shares, vss_commitment[0], vss_commitment


# -- Pedersen DKG with proofs of knowledge (Komlo & Goldberg 2020, Fig. 1) -----


@dataclass(frozen=True, slots=True)
class DkgRound1Package:
    """What participant ``identifier`` broadcasts in round 1: commitments
    phi_k = a_k*B to its polynomial's coefficients and a Schnorr proof
    (R, mu) of knowledge of a_0."""

    identifier: int
    commitment: tuple[Element, ...]
    proof_r: Element
    proof_mu: int


@dataclass(frozen=True, slots=True)
class DkgSecretPackage:
    """Round-1 state a participant keeps to itself. Delete after finalising."""

    identifier: int
    min_participants: int
    max_participants: int
    context: bytes
    coefficients: tuple[int, ...]
    commitment: tuple[Element, ...]


@dataclass(frozen=True, slots=True)
class DkgKeyPackage:
    """A participant's DKG result: all it needs to sign and to check shares."""

    identifier: int
    min_participants: int
    max_participants: int
    signing_share: int
    group_public_key: Element
    verifying_shares: Mapping[int, Element]


def dkg_proof_challenge(
    context: bytes, identifier: int, constant_commitment: Element, proof_r: Element
) -> int:
    """c = H(i, Phi, a_0*B, R) of the paper.  The identifier stops a proof
    being replayed by someone else and the context stops it being replayed
    into another run.  The context should name the run completely (chain id,
    epoch, the participant set, MIN/MAX_PARTICIPANTS); it is length-prefixed
    so it cannot run into the fixed-size fields."""
    return h_dkg(
        len(context).to_bytes(8, "big")
        + context
        + serialize_scalar(identifier)
        + serialize_element(constant_commitment)
        + serialize_element(proof_r)
    )


def dkg_round1(
    identifier: int,
    min_participants: int,
    max_participants: int,
    context: bytes,
    coefficients: Sequence[int],
    proof_randomness: bytes,
) -> tuple[DkgSecretPackage, DkgRound1Package]:
    """Round 1 for participant ``identifier`` in 1..max_participants.

    ``coefficients`` are the MIN_PARTICIPANTS random coefficients a_0..a_{t-1}
    of the participant's polynomial (a_0 is its contribution to the group
    secret); ``proof_randomness`` is 32 fresh random bytes for the proof's
    nonce, hedged with a_0 as in nonce_generate.
    """
    _check_thresholds(min_participants, max_participants)
    if not 1 <= identifier <= max_participants:
        raise FrostError("identifier must be in 1..MAX_PARTICIPANTS")
    if len(coefficients) != min_participants:
        raise FrostError("need MIN_PARTICIPANTS coefficients")
    # A zero coefficient commits to the identity, which cannot be sent.
    if not all(0 < a < ORDER for a in coefficients):
        raise FrostError("coefficients must be non-zero scalars")
    commitment = tuple(vss_commit(coefficients))
    a_0 = coefficients[0]
    k = nonce_generate(a_0, proof_randomness)
    proof_r = scalar_base_mult(k)
    c = dkg_proof_challenge(context, identifier, commitment[0], proof_r)
    proof_mu = (k + a_0 * c) % ORDER
    secret = DkgSecretPackage(
        identifier,
        min_participants,
        max_participants,
        bytes(context),
        tuple(coefficients),
        commitment,
    )
    return secret, DkgRound1Package(identifier, commitment, proof_r, proof_mu)


def dkg_verify_round1(package: DkgRound1Package, context: bytes, min_participants: int) -> bool:
    """Check a round-1 package from public data alone: the right number of
    well-formed commitments and a valid proof of knowledge of a_0."""
    if not 0 < package.identifier < ORDER or len(package.commitment) != min_participants:
        return False
    if not all(_is_valid_element(e) for e in (*package.commitment, package.proof_r)):
        return False
    if not 0 <= package.proof_mu < ORDER:
        return False
    c = dkg_proof_challenge(context, package.identifier, package.commitment[0], package.proof_r)
    # R = mu*B - c*phi_0, the paper's check, written as an addition.
    return element_add(package.proof_r, scalar_mult(package.commitment[0], c)) == (
        scalar_base_mult(package.proof_mu)
    )


def _check_round1_packages(
    secret: DkgSecretPackage, round1_packages: Mapping[int, DkgRound1Package]
) -> None:
    everyone = set(range(1, secret.max_participants + 1))
    if set(round1_packages) != everyone:
        raise DkgError(
            "need a round-1 package from every participant",
            sorted(everyone ^ set(round1_packages)),
        )
    own = round1_packages[secret.identifier]
    if own.commitment != secret.commitment:
        raise FrostError("round-1 packages hold a different package under our identifier")
    bad = [
        i
        for i, p in round1_packages.items()
        if p.identifier != i or not dkg_verify_round1(p, secret.context, secret.min_participants)
    ]
    if bad:
        raise DkgError("invalid round-1 package", bad)


def dkg_round2(
    secret: DkgSecretPackage, round1_packages: Mapping[int, DkgRound1Package]
) -> dict[int, int]:
    """Round 2: after checking everyone's round-1 package (own included, all
    as broadcast), the share f_i(l) for every other participant l.  Each must
    reach l confidentially and authenticated."""
    _check_round1_packages(secret, round1_packages)
    return {
        recipient: polynomial_evaluate(recipient, secret.coefficients)
        for recipient in range(1, secret.max_participants + 1)
        if recipient != secret.identifier
    }


def dkg_verify_share(
    dealer_commitment: Sequence[Element], recipient_index: int, share: int
) -> bool:
    """Whether share = f_dealer(recipient) for the committed polynomial."""
    return vss_verify((recipient_index, share), dealer_commitment)


def complaint_is_valid(
    dealer_commitments: Sequence[Element], recipient_index: int, revealed_share: bytes
) -> bool:
    """Decide a recipient's complaint against a dealer from public data.

    True when ``revealed_share`` is not f_dealer(recipient) for the
    polynomial the dealer committed to in round 1 (a malformed encoding
    counts: no honest dealer sends one).  This settles only what the share
    *is*; that the dealer *sent* these bytes has to be established by the
    caller, e.g. a dealer signature over the share, or the usual answer to a
    complaint where the dealer itself publishes the share and this function
    is applied to what it published.  ``dealer_commitments`` must already have
    passed dkg_verify_round1.
    """
    if not _is_commitment(dealer_commitments):
        raise FrostError("dealer commitments are malformed")
    if not 0 < recipient_index < ORDER:
        return False
    try:
        share = deserialize_scalar(revealed_share)
    except FrostError:
        return True
    return not dkg_verify_share(dealer_commitments, recipient_index, share)


def _is_commitment(commitment: Sequence[Element]) -> bool:
    return len(commitment) > 0 and all(_is_valid_element(e) for e in commitment)


def dkg_group_info(
    round1_packages: Mapping[int, DkgRound1Package], max_participants: int
) -> tuple[Element, dict[int, Element]]:
    """The group public key and every participant's verifying share, from the
    (already verified) round-1 packages alone: the sum of the dealers'
    commitments is a VSS commitment to the sum of their polynomials."""
    packages = list(round1_packages.values())
    if not packages:
        raise FrostError("no round-1 packages")
    width = len(packages[0].commitment)
    if any(len(p.commitment) != width for p in packages):
        raise FrostError("round-1 packages commit to polynomials of different degrees")
    combined: list[Element] = []
    for k in range(width):
        total = IDENTITY
        for p in packages:
            total = element_add(total, p.commitment[k])
        combined.append(total)
    if combined[0] == IDENTITY:
        raise FrostError("the group public key came out as the identity")
    verifying_shares = {j: derive_public_point(combined, j) for j in range(1, max_participants + 1)}
    return combined[0], verifying_shares


def dkg_finalize(
    secret: DkgSecretPackage,
    round1_packages: Mapping[int, DkgRound1Package],
    received_shares: Mapping[int, int],
) -> DkgKeyPackage:
    """Check the shares received from every other participant against their
    commitments and combine them.  Raises DkgError naming the dealers whose
    shares fail, which is the cue to file complaints (complaint_is_valid)."""
    _check_round1_packages(secret, round1_packages)
    others = set(range(1, secret.max_participants + 1)) - {secret.identifier}
    if set(received_shares) != others:
        raise DkgError("need a share from every other participant", others ^ set(received_shares))
    bad = [
        dealer
        for dealer, share in received_shares.items()
        if not dkg_verify_share(round1_packages[dealer].commitment, secret.identifier, share)
    ]
    if bad:
        raise DkgError("share does not match the dealer's commitment", bad)
    signing_share = polynomial_evaluate(secret.identifier, secret.coefficients)
    for share in received_shares.values():
        signing_share = (signing_share + share) % ORDER
    group_public_key, verifying_shares = dkg_group_info(round1_packages, secret.max_participants)
    # Follows from the checks above; kept as a guard against a bug in them.
    if scalar_base_mult(signing_share) != verifying_shares[secret.identifier]:
        raise FrostError("signing share does not match its verifying share")
    return DkgKeyPackage(
        secret.identifier,
        secret.min_participants,
        secret.max_participants,
        signing_share,
        group_public_key,
        verifying_shares,
    )
