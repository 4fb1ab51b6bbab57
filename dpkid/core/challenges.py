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
from dpkid.core.types import Application

CHALLENGE_TAG: Final = b"dpkid/challenge/v1\x00"
THUMBPRINT_TAG: Final = b"dpkid/account-thumbprint/v1\x00"
HTTP_PATH_PREFIX: Final = "/.well-known/dpki-challenge/"
DNS_LABEL: Final = "_dpki-challenge"
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

    @property
    def http_path(self) -> str:
        return HTTP_PATH_PREFIX + self.token

    def http_url(self, domain: str, port: int = 80) -> str:
        host = base_name(domain)
        return f"http://{host}{'' if port == 80 else f':{port}'}{self.http_path}"

    def dns_name(self, domain: str) -> str:
        return f"{DNS_LABEL}.{base_name(domain)}"

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
