"""Receipt codes. Normative table in protocol/SPEC.md section "Rejection codes".

Codes below 10 are pre-check failures: the transaction is not executed, no fee
is charged and its nonce is not consumed. Codes from 10 up are execution
failures: the fee is charged and the nonce advances, nothing else changes.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    # pre-checks (not charged)
    MALFORMED = 1
    TX_TOO_LARGE = 2
    WRONG_CHAIN_ID = 3
    BAD_SIGNATURE = 4
    BAD_NONCE = 5
    FEE_TOO_LOW = 6
    CANNOT_PAY_FEE = 7
    BAD_GRANT = 8  # a delegated tx whose grant cannot act for it now
    # execution failures (fee charged, nonce consumed)
    INSUFFICIENT_FUNDS = 10
    INVALID_AMOUNT = 11
    INVALID_DOMAIN = 20
    TOO_MANY_DOMAINS = 21
    INVALID_KEY = 22
    INVALID_VALIDITY = 23
    INVALID_ORG = 24
    INSUFFICIENT_ESCROW = 25
    DOMAIN_CERT_LIMIT = 26
    INVALID_AUTHZ = 27
    INVALID_GRANT = 28
    GRANT_LIMIT = 29
    UNKNOWN_APPLICATION = 30
    APPLICATION_CLOSED = 31
    NOT_VALIDATOR = 32
    NOT_ENDORSER = 35
    DUPLICATE_ENDORSEMENT = 36
    NOT_ENDORSABLE = 37
    UNKNOWN_CERT = 40
    CERT_REVOKED = 41
    NOT_AUTHORIZED = 42
    INVALID_REASON = 43
    NOT_ENDORSED_BY_SENDER = 44
    DUPLICATE_REVOKE_VOTE = 45
    UNKNOWN_PROPOSAL = 50
    PROPOSAL_CLOSED = 51
    DUPLICATE_VOTE = 52
    INVALID_GOV_ACTION = 53
    TSS_WRONG_PHASE = 60
    TSS_DUPLICATE = 61
    TSS_BAD_DEAL = 62
    TSS_BAD_COMPLAINT = 63
    TSS_BAD_NONCES = 64


PRECHECK_CODES = frozenset(c for c in Code if 0 < c < 10)


class TxFailure(Exception):
    """Raised inside a handler to abort the tx body; becomes a receipt, never escapes."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BlockError(ValueError):
    """The caller passed a header that cannot follow this state (a local error)."""


class StaleStateError(RuntimeError):
    """A State object was used after apply_block consumed it."""
