"""Domain-control challenges (SPEC §7.3.1), modelled on ACME (RFC 8555 §8).

Pure: the values every party computes from an application. The token is
derived from the application id and the applicant's account key, and the key
authorization binds it to that key's thumbprint, so a response published for
one application and account proves nothing for any other.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

from dpkid.core.crypto import sha256
from dpkid.core.types import Application, Authorization

CHALLENGE_TAG: Final = b"dpkid/challenge/v1\x00"
THUMBPRINT_TAG: Final = b"dpkid/account-thumbprint/v1\x00"
HTTP_PATH_PREFIX: Final = "/.well-known/dpki-challenge/"
DNS_LABEL: Final = "_dpki-challenge"
AUTHZ_TAG: Final = b"dpkid/authz-challenge/v1\x00"
# RFC 8555 §8.3 and §8.4: the ACME formats, for authorizations made through ACME.
ACME_HTTP_PATH_PREFIX: Final = "/.well-known/acme-challenge/"
ACME_DNS_LABEL: Final = "_acme-challenge"
ACME_TOKEN_TAG: Final = b"dpkid/acme-token/v1\x00"
ACME_SALT_LEN: Final = 16


def acme_token_for(account_pubkey: bytes, salt: bytes) -> str:
    """An ACME challenge token (RFC 8555 §8.1: base64url, 256 bits here) bound
    to the dpkid account that will hold the authorization: 16 random bytes
    and the first 16 of sha256(tag || account key || them). The ledger checks
    the binding, so nobody can request an authorization with someone else's
    published key authorization."""
    if len(salt) != ACME_SALT_LEN:
        raise ValueError(f"the salt is {ACME_SALT_LEN} bytes")
    return b64url(salt + sha256(ACME_TOKEN_TAG + account_pubkey + salt)[:16])


def acme_token_binds(token: str, account_pubkey: bytes) -> bool:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return False
    if len(raw) != 2 * ACME_SALT_LEN or b64url(raw) != token:
        return False
    return acme_token_for(account_pubkey, raw[:ACME_SALT_LEN]) == token


MAX_HTTP_BODY_BYTES: Final = 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token_for(app_id: bytes, applicant_pubkey: bytes) -> str:
    return b64url(sha256(CHALLENGE_TAG + app_id + applicant_pubkey))


def thumbprint(pubkey: bytes) -> str:
    return b64url(sha256(THUMBPRINT_TAG + pubkey))


def key_authorization(token: str, applicant_pubkey: bytes) -> str:
    return f"{token}.{thumbprint(applicant_pubkey)}"


def dns_txt_value(key_auth: str) -> str:
    return b64url(sha256(key_auth.encode("ascii")))


def base_name(domain: str) -> str:
    return domain[2:] if domain.startswith("*.") else domain


@dataclass(frozen=True)
class Challenge:
    token: str
    key_authorization: str
    txt_value: str
    domains: tuple[str, ...]
    path_prefix: str = HTTP_PATH_PREFIX
    dns_label: str = DNS_LABEL

    @property
    def http_path(self) -> str:
        return self.path_prefix + self.token

    def http_url(self, domain: str, port: int = 80) -> str:
        host = base_name(domain)
        return f"http://{host}{'' if port == 80 else f':{port}'}{self.http_path}"

    def dns_name(self, domain: str) -> str:
        return f"{self.dns_label}.{base_name(domain)}"

    def methods_for(self, domain: str) -> tuple[str, ...]:
        # A wildcard covers a whole zone: only DNS shows control of it.
        return ("dns-01",) if domain.startswith("*.") else ("http-01", "dns-01")

    def as_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "key_authorization": self.key_authorization,
            "http_path": self.http_path,
            "http_body": self.key_authorization,
            "dns": [
                {"name": self.dns_name(d), "type": "TXT", "value": self.txt_value}
                for d in self.domains
            ],
            "http": [self.http_url(d) for d in self.domains if not d.startswith("*.")],
        }


def challenge_for(app: Application) -> Challenge:
    token = token_for(app.app_id, app.applicant_pubkey)
    ka = key_authorization(token, app.applicant_pubkey)
    return Challenge(token, ka, dns_txt_value(ka), tuple(app.domains))


def challenge_for_authz(a: Authorization) -> Challenge:
    """The challenge of an authorization (SPEC §7.9): dpkid's format, with the
    token derived from the authorization id and the account key, or ACME's,
    with the ACME client's token and account-key thumbprint (RFC 8555 §8.1)."""
    if a.format == "acme":
        ka = f"{a.token}.{a.thumbprint}"
        return Challenge(
            a.token, ka, dns_txt_value(ka), (a.name,), ACME_HTTP_PATH_PREFIX, ACME_DNS_LABEL
        )
    token = b64url(sha256(AUTHZ_TAG + a.authz_id + a.account_pubkey))
    ka = key_authorization(token, a.account_pubkey)
    return Challenge(token, ka, dns_txt_value(ka), (a.name,))
