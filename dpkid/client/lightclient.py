"""Light-client verification: trust a validator set, not a node (pure).

Starting from the genesis validator set, each header is accepted only if:
it links to the previous one by hash, its height and chain id are right, its
validators_hash names the set we trust for that height, and its commit carries
signatures of more than 2/3 of that set's power. The next set is accepted
only if it hashes to the header's next_validators_hash (which that commit
signed). A record proof is then checked against the app hash of a verified
header. Anything a lying node could change breaks one of these checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dpkid.core import codec
from dpkid.core.consensus.messages import Commit, header_hash
from dpkid.core.consensus.validity import valset_hash, verify_commit
from dpkid.core.consensus.valset import ValidatorInfo, ValidatorSet
from dpkid.core.crypto import address_of, verify_ed25519
from dpkid.core.state.machine import cert_status
from dpkid.core.state.proofs import ProofError, RecordProof, verify_cert
from dpkid.core.types import Certificate, Genesis, Header


class VerifyError(Exception):
    """The data does not verify: the node lied or is broken."""


def valset_from_pairs(pairs: Sequence[tuple[bytes, int]]) -> ValidatorSet:
    try:
        return ValidatorSet([ValidatorInfo(address_of(pk), pk, p) for pk, p in pairs])
    except ValueError as exc:
        raise VerifyError(f"bad validator set: {exc}") from None


def genesis_valset(g: Genesis) -> ValidatorSet:
    return valset_from_pairs([(v.pubkey, v.power) for v in g.validators])


@dataclass
class TrustedState:
    chain_id: str
    height: int  # last verified header height (0 = only genesis)
    header: Header | None
    block_hash: bytes
    vals_next: ValidatorSet  # the set that must sign height + 1
    time_ms: int = 0  # the trusted header's time (the genesis time at height 0)


def trust_genesis(g: Genesis) -> TrustedState:
    return TrustedState(g.chain_id, 0, None, b"", genesis_valset(g), g.genesis_time_ms)


def advance(
    t: TrustedState, header: Header, commit: Commit, next_vals: ValidatorSet | None
) -> TrustedState:
    """Verify the next header and its commit; ``next_vals`` is the set the node
    claims for the height after it (checked against next_validators_hash)."""
    h = t.height + 1
    if header.chain_id != t.chain_id:
        raise VerifyError(f"header {h}: chain id {header.chain_id!r} is not {t.chain_id!r}")
    if header.height != h:
        raise VerifyError(f"expected header {h}, got {header.height}")
    if header.prev_block_hash != t.block_hash:
        raise VerifyError(f"header {h} does not link to header {h - 1}")
    if t.header is not None and header.time_ms <= t.header.time_ms:
        raise VerifyError(f"header {h} time does not increase")
    if header.validators_hash != valset_hash(t.vals_next):
        raise VerifyError(f"header {h} names a validator set we do not trust")
    bh = header_hash(header)
    if commit.height != h or not verify_commit(t.chain_id, commit, t.vals_next, bh, verify_ed25519):
        raise VerifyError(f"commit for header {h} lacks signatures of more than 2/3 of the power")
    if next_vals is None:
        next_vals = t.vals_next
    if header.next_validators_hash != valset_hash(next_vals):
        raise VerifyError(f"validator set offered for {h + 1} does not match header {h}")
    return TrustedState(t.chain_id, h, header, bh, next_vals, header.time_ms)


# ------------------------------------------------------------------ skipping (LIGHT.md)

# LIGHT.md §3: a header that skips ahead is trusted when validators of the
# trusted next set holding more than this fraction of its power signed it
# (CometBFT's default trust level), and more than 2/3 of its own set did.
TRUST_NUM = 1
TRUST_DEN = 3
MAX_CLOCK_DRIFT_MS = 10_000
MAX_BISECTION_STEPS = 4_096


class NotEnoughTrust(VerifyError):
    """Too little of the trusted set signed the target: bisect (LIGHT.md §4)."""


class TrustExpired(VerifyError):
    """The trusted header is older than the trusting period (LIGHT.md §5)."""


@dataclass(frozen=True)
class LightBlock:
    """A header with its commit and the two sets it names (LIGHT.md §2)."""

    header: Header
    commit: Commit
    vals: ValidatorSet  # hashes to header.validators_hash; signed the commit
    next_vals: ValidatorSet  # hashes to header.next_validators_hash


def signed_power(chain_id: str, commit: Commit, vals: ValidatorSet) -> int:
    """The power of ``vals``' members whose signature in ``commit`` is good;
    signers outside ``vals`` count nothing (the sets may differ)."""
    from dpkid.core.consensus.messages import sign_bytes_of_vote
    from dpkid.core.consensus.validity import commit_votes

    power = 0
    last = b""
    for vote in commit_votes(chain_id, commit):
        if vote.validator <= last:
            return 0  # unsorted or repeated: malformed, count nothing
        last = vote.validator
        v = vals.get(vote.validator)
        if v is not None and verify_ed25519(v.pubkey, sign_bytes_of_vote(vote), vote.sig):
            power += v.power
    return power


def check_light_block(chain_id: str, lb: LightBlock) -> bytes:
    """A light block in itself: its sets are the ones its header names, and
    more than 2/3 of its own set signed it. Returns the header's hash."""
    h = lb.header
    if h.chain_id != chain_id:
        raise VerifyError(f"header {h.height}: chain id {h.chain_id!r} is not {chain_id!r}")
    if h.validators_hash != valset_hash(lb.vals):
        raise VerifyError(f"header {h.height}: the validator set offered is not the one it names")
    if h.next_validators_hash != valset_hash(lb.next_vals):
        raise VerifyError(f"header {h.height}: the next validator set offered is not the one named")
    bh = header_hash(h)
    if lb.commit.height != h.height or not verify_commit(
        chain_id, lb.commit, lb.vals, bh, verify_ed25519
    ):
        raise VerifyError(
            f"commit for header {h.height} lacks signatures of more than 2/3 of its set's power"
        )
    return bh


def verify_light_block(
    t: TrustedState, lb: LightBlock, now_ms: int, trusting_period_ms: int
) -> TrustedState:
    """LIGHT.md §3: one step from a trusted state to a later header, adjacent
    or skipping. Raises NotEnoughTrust when a bisection step may still help."""
    h = lb.header
    if now_ms - t.time_ms >= trusting_period_ms:
        raise TrustExpired(
            f"the trusted header (height {t.height}) is {(now_ms - t.time_ms) // 1000} s old, "
            f"beyond the trusting period of {trusting_period_ms // 1000} s: validators of that "
            "set may have left and could sign a fork unpunished; re-establish trust with "
            "--trust genesis.json or --trust-height/--trust-hash from a source you trust"
        )
    if h.height <= t.height:
        raise VerifyError(f"header {h.height} is not after the trusted height {t.height}")
    if t.header is not None and h.time_ms <= t.header.time_ms:
        raise VerifyError(f"header {h.height} time does not increase")
    if h.time_ms > now_ms + MAX_CLOCK_DRIFT_MS:
        raise VerifyError(f"header {h.height} is from the future ({h.time_ms} ms)")
    bh = check_light_block(t.chain_id, lb)
    if h.height == t.height + 1:
        # CometBFT's verifyAdjacent: the hand-off the trusted header committed to.
        if h.prev_block_hash != t.block_hash:
            raise VerifyError(f"header {h.height} does not link to header {t.height}")
        if h.validators_hash != valset_hash(t.vals_next):
            raise VerifyError(f"header {h.height} names a validator set we do not trust")
    else:
        # CometBFT's verifyNonAdjacent: enough of the set we trust vouches for it.
        p = signed_power(t.chain_id, lb.commit, t.vals_next)
        if TRUST_DEN * p <= TRUST_NUM * t.vals_next.total_power:
            raise NotEnoughTrust(
                f"header {h.height}: the trusted set signed {p} of {t.vals_next.total_power}"
            )
    return TrustedState(t.chain_id, h.height, h, bh, lb.next_vals, h.time_ms)


def skip_to(
    t: TrustedState,
    target: int,
    fetch: Callable[[int], LightBlock],
    now_ms: int,
    trusting_period_ms: int,
) -> tuple[TrustedState, int]:
    """LIGHT.md §4: bisection from ``t`` to ``target``; returns the new trusted
    state and how many light blocks were fetched."""
    cache: dict[int, LightBlock] = {}

    def get(height: int) -> LightBlock:
        if height not in cache:
            lb = fetch(height)
            if lb.header.height != height:
                raise VerifyError(f"asked for header {height}, got {lb.header.height}")
            cache[height] = lb
        return cache[height]

    # CometBFT's verifySkipping: a stack of heights that could not yet be
    # trusted, target at the bottom. After a success the next one up is tried
    # again from the new height, rather than the target, so each set change
    # costs one descent of about log2(gap) fetches.
    pending = [target]
    for _ in range(MAX_BISECTION_STEPS):
        if not pending:
            return t, len(cache)
        top = pending[-1]
        try:
            t = verify_light_block(t, get(top), now_ms, trusting_period_ms)
            pending.pop()
        except NotEnoughTrust:
            if top <= t.height + 1:
                raise  # an adjacent step never lacks trust; unreachable in practice
            pending.append((t.height + top) // 2)
    raise VerifyError(f"no path to header {target} within {MAX_BISECTION_STEPS} steps")


@dataclass
class CertVerdict:
    valid: bool
    status: str  # valid | revoked | expired | not_yet_valid | unknown | mismatch
    reason: str
    height: int  # the verified header the verdict is judged at
    time_ms: int
    cert: Certificate | None

    def as_json(self) -> dict[str, Any]:
        from dpkid.core.jsonview import to_json

        return {
            "valid": self.valid,
            "status": self.status,
            "reason": self.reason,
            "height": self.height,
            "time_ms": self.time_ms,
            "cert_type": self.cert.cert_type if self.cert else None,
            "certificate": to_json(self.cert) if self.cert else None,
        }


def judge_certificate(
    header: Header,
    proof: RecordProof,
    cert_id: bytes,
    domains: Sequence[str] = (),
    spki: bytes | None = None,
    claimed_type: str | None = None,
) -> CertVerdict:
    """Decide valid / revoked / unknown / expired / mismatch against a verified header."""
    try:
        cert = verify_cert(header.app_hash, cert_id, proof)
    except ProofError as exc:
        raise VerifyError(f"certificate proof does not verify: {exc}") from None
    t = header.time_ms
    if cert is None:
        return CertVerdict(
            False, "unknown", "no such certificate on the ledger", header.height, t, None
        )
    st = cert_status(cert, t)
    if st != "valid":
        why = {
            "revoked": f"revoked ({_reason_name(cert.revocation_reason)})",
            "expired": "expired at header time",
            "not_yet_valid": "not yet valid at header time",
        }[st]
        return CertVerdict(False, st, why, header.height, t, cert)
    from dpkid.core.domains import domain_matches

    for d in domains:
        if not any(domain_matches(p, d) or p == d for p in cert.domains):
            return CertVerdict(
                False, "mismatch", f"{d} is not named by the ledger record", header.height, t, cert
            )
    if spki is not None and spki != cert.spki:
        return CertVerdict(
            False, "mismatch", "public key differs from the ledger record", header.height, t, cert
        )
    if claimed_type is not None and claimed_type != cert.cert_type:
        if cert.issued_type == claimed_type and cert.cert_type == "DV":
            return CertVerdict(
                True,
                "valid",
                f"degraded: issued {cert.issued_type}, now valid as DV only",
                header.height,
                t,
                cert,
            )
        return CertVerdict(
            False,
            "mismatch",
            f"type {claimed_type} but the ledger says {cert.cert_type}",
            header.height,
            t,
            cert,
        )
    return CertVerdict(True, "valid", f"valid {cert.cert_type} certificate", header.height, t, cert)


def _reason_name(code: int) -> str:
    from dpkid.core.state.machine import REASON_NAMES

    return REASON_NAMES.get(code, f"reason code {code}")


def decode_header(hexstr: str) -> Header:
    try:
        return codec.decode(bytes.fromhex(hexstr), Header)
    except (ValueError, codec.DecodeError) as exc:
        raise VerifyError(f"undecodable header: {exc}") from None


def decode_commit(hexstr: str) -> Commit:
    try:
        return codec.decode(bytes.fromhex(hexstr), Commit)
    except (ValueError, codec.DecodeError) as exc:
        raise VerifyError(f"undecodable commit: {exc}") from None
