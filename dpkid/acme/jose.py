"""JOSE for the ACME server: josepy, plus RFC 8037's OKP keys and EdDSA.

josepy (the certbot project's JOSE library) has RSA and EC keys but no OKP;
RFC 8555 servers are expected to take EdDSA account keys. The two classes here
plug into josepy's own registries, so ``JWK.from_json`` and ``JWS`` parsing
handle Ed25519 like the built-in types; the signature itself is the
``cryptography`` package's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import cryptography.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from josepy import errors, json_util, jwa, jwk, util

__all__ = ["ACCOUNT_ALGS", "JWKOKP", "EdDSA", "thumbprint_b64"]


@jwk.JWK.register
class JWKOKP(jwk.JWK):
    """RFC 8037 octet key pair; Ed25519 only (the curve RFC 8555 servers see)."""

    typ = "OKP"
    __slots__ = ("key",)
    required = ("crv", jwk.JWK.type_field_name, "x")
    cryptography_key_types = (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)
    key: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "key" in kwargs and not isinstance(kwargs["key"], util.ComparableKey):
            kwargs["key"] = util.ComparableKey(kwargs["key"])
        super().__init__(*args, **kwargs)

    def _public_raw(self) -> bytes:
        k = self.key._wrapped
        pub = k.public_key() if isinstance(k, ed25519.Ed25519PrivateKey) else k
        raw: bytes = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw

    def fields_to_partial_json(self) -> dict[str, str]:
        out = {"crv": "Ed25519", "x": json_util.encode_b64jose(self._public_raw())}
        k = self.key._wrapped
        if isinstance(k, ed25519.Ed25519PrivateKey):
            d = k.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            out["d"] = json_util.encode_b64jose(d)
        return out

    @classmethod
    def fields_from_json(cls, jobj: Mapping[str, Any]) -> JWKOKP:
        if jobj.get("crv") != "Ed25519":
            raise errors.DeserializationError(f"unsupported OKP curve {jobj.get('crv')!r}")
        try:
            if "d" in jobj:
                return cls(
                    key=ed25519.Ed25519PrivateKey.from_private_bytes(
                        json_util.decode_b64jose(jobj["d"])
                    )
                )
            x = json_util.decode_b64jose(jobj["x"])
            return cls(key=ed25519.Ed25519PublicKey.from_public_bytes(x))
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.DeserializationError(f"bad OKP key: {exc}") from None

    def public_key(self) -> JWKOKP:
        return type(self)(key=ed25519.Ed25519PublicKey.from_public_bytes(self._public_raw()))


class _JWAEdDSA(jwa.JWASignature):
    kty = JWKOKP

    def sign(self, key: Any, msg: bytes) -> bytes:
        sig: bytes = key.sign(msg)
        return sig

    def verify(self, key: Any, msg: bytes, sig: bytes) -> bool:
        k = key._wrapped if isinstance(key, util.ComparableKey) else key
        if not isinstance(k, ed25519.Ed25519PublicKey):
            return False
        try:
            k.verify(sig, msg)
        except cryptography.exceptions.InvalidSignature:
            return False
        return True


EdDSA: Final = jwa.JWASignature.register(_JWAEdDSA("EdDSA"))

# Account-key signature algorithms the server takes (RFC 8555 §6.2: not
# "none", no MAC). Each is checked against its key type before verifying,
# since josepy's own verify does not.
ACCOUNT_ALGS: Final = {
    a.name: a
    for a in (
        jwa.RS256,
        jwa.RS384,
        jwa.RS512,
        jwa.PS256,
        jwa.ES256,
        jwa.ES384,
        jwa.ES512,
        EdDSA,
    )
}
EAB_ALGS: Final = {a.name: a for a in (jwa.HS256, jwa.HS384, jwa.HS512)}


def thumbprint_b64(key: jwk.JWK) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: ACME's key authorization suffix."""
    return json_util.encode_b64jose(key.thumbprint())
