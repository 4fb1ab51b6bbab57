"""The ACME server (RFC 8555, RFC 9773 renewal information) over a dpkid node.

Every status it reports is read from the ledger at request time: an ACME
authorization's from its ledger authorization (SPEC §7.9), an order's from
its application, certificate and threshold signature. The server's own
SQLite rows (store.py) only map ACME URLs and account keys onto ledger ids.

Users pay and own: External Account Binding names a ledger grant (SPEC §7.10)
from the user's dpkid account to this server's key, with the EAB MAC key
sealed to that key inside the grant. The server signs each ledger
transaction as the grant's delegate, so certificates belong to the user's
account, fees come from it, and the user can end the grant at any time.

Served with Starlette on Hypercorn's trio worker; JOSE is josepy's, message
types the ``acme`` package's.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import nacl.exceptions
import nacl.public
import structlog
import trio
from acme import jws as acme_jws
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy import errors, jwk
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dpkid.acme import store as st
from dpkid.acme.jose import ACCOUNT_ALGS, EAB_ALGS, thumbprint_b64
from dpkid.client.rpc import NodeClient, RpcClientError, encode_signed_tx
from dpkid.core.challenges import acme_token_for
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.domains import DomainError, validate_domain, validate_domain_list
from dpkid.core.keys import SubjectKeyError, parse_spki
from dpkid.core.state.authz import AUTHZ_TAG
from dpkid.core.state.machine import ALLOWED_REASONS, APP_TAG
from dpkid.core.tss.dkg import x25519_public, x25519_secret
from dpkid.core.types import (
    AuthzRequest,
    CertApply,
    CertRenew,
    DelegableBody,
    Delegated,
    Policy,
    Revoke,
)

log = structlog.get_logger("dpkid.acme")

ERR: Final = "urn:ietf:params:acme:error:"
MAX_BODY_BYTES: Final = 64 * 1024
MAX_NONCES: Final = 50_000  # issued, unused nonces kept; the oldest are forgotten first
MAX_IDENTIFIERS: Final = 100
MAX_CONTACTS: Final = 4
MAX_ORDERS_LISTED: Final = 100
MAX_OWNER_ACCOUNTS: Final = 16  # grants tried for a revocation signed by the certificate key
ORDER_TTL_MS: Final = 7 * 86_400_000
PENDING_AUTHZ_TTL_MS: Final = 7 * 86_400_000
REUSE_MARGIN_MS: Final = 3_600_000  # reuse a valid authorization only if it lasts this much longer
REVOKE_WAIT_S: Final = 60.0
READ_TIMEOUT_S: Final = 30
NOT_FOUND: Final = -32004
NOT_READY: Final = -32005
RETRY_LATER: Final = -32006  # RPC.md §4.1: refused for now, not for good
SERVER_FILE: Final = "acme-server.key"
DB_FILE: Final = "acme.sqlite"


class Problem(Exception):
    """An RFC 7807 problem document with an ACME error type (RFC 8555 §6.7)."""

    def __init__(
        self,
        status: int,
        typ: str,
        detail: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.typ = typ if typ.startswith("urn:") else ERR + typ
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}

    def doc(self) -> dict[str, Any]:
        return {"type": self.typ, "detail": self.detail, "status": self.status, **self.extra}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not isinstance(text, str) or len(text) > 4 * MAX_BODY_BYTES:
        raise ValueError("not base64url text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ServerConfig:
    base_url: str  # e.g. http://127.0.0.1:14000, no trailing slash
    node_home: Path | None
    rpc_socket: str | None
    state_dir: Path
    policy: Policy
    validity_days: int = 90
    retry_after_s: int = 1
    ari_retry_after_s: int = 21_600


def load_server_key(state_dir: Path) -> SigningKey:
    """The server's own Ed25519 key (the delegate of every grant), made once, 0600."""
    path = state_dir / SERVER_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
    seed = bytes.fromhex(path.read_text().strip())
    return SigningKey(seed)


def seal_eab_key(delegate_pubkey: bytes, hmac_key: bytes) -> bytes:
    """What a user puts in ``GrantCreate.sealed``: the EAB MAC key, readable
    only by the server holding ``delegate_pubkey``."""
    box = nacl.public.SealedBox(nacl.public.PublicKey(x25519_public(delegate_pubkey)))
    return bytes(box.encrypt(hmac_key))


class Ledger:
    """The node's RPC, reconnecting when the connection drops, and the
    server's delegated transactions in nonce order."""

    def __init__(self, cfg: ServerConfig, key: SigningKey) -> None:
        self.cfg = cfg
        self.key = key
        self._client: NodeClient | None = None
        self._connect_lock = trio.Lock()
        self._submit_lock = trio.Lock()
        self.chain_id = ""

    async def _conn(self) -> NodeClient:
        async with self._connect_lock:
            if self._client is None:
                self._client = await NodeClient.connect(self.cfg.node_home, self.cfg.rpc_socket)
            return self._client

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        for attempt in range(2):
            try:
                c = await self._conn()
                return await c.call(method, params or {})
            except RpcClientError:
                raise
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as e:
                self._client = None
                if attempt == 1:
                    raise Problem(
                        503, "serverInternal", f"the dpkid node is unreachable: {e}"
                    ) from None
        raise AssertionError("unreachable")

    async def get(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """A record, or None if the ledger has none (or it is not ready yet)."""
        try:
            res: dict[str, Any] = await self.call(method, params)
        except RpcClientError as e:
            if e.code in (NOT_FOUND, NOT_READY):
                return None
            raise Problem(500, "serverInternal", f"{method}: {e.message}") from None
        return res

    async def start(self) -> None:
        status = await self.call("status")
        self.chain_id = str(status["chain_id"])

    async def submit(self, grant_id: str, body: DelegableBody) -> str:
        """Sign ``body`` as the grant's delegate and submit it; the tx hash (hex)."""
        async with self._submit_lock:
            acct = await self.call("account_get", {"address": self.key.address.hex()})
            raw = encode_signed_tx(
                self.key,
                self.chain_id,
                int(acct["next_nonce"]),
                self.cfg.policy.min_tx_fee,
                Delegated(bytes.fromhex(grant_id), body),
            )
            try:
                res = await self.call("tx_submit", {"tx": raw.hex()})
            except RpcClientError as e:
                if e.code == RETRY_LATER:
                    # Not the request's fault (a full mempool): the client retries.
                    data = e.data if isinstance(e.data, dict) else {}
                    after_s = max(1, int(data.get("retry_after_ms", 1000)) // 1000)
                    raise Problem(
                        503,
                        "rateLimited",
                        f"the node is busy: {e.message}",
                        {"Retry-After": str(after_s)},
                    ) from None
                raise Problem(
                    403, "unauthorized", f"the ledger refused the transaction: {e.message}"
                ) from None
            return str(res["hash"])

    async def wait_committed(self, tx_hash: str, timeout_s: float) -> dict[str, Any] | None:
        with trio.move_on_after(timeout_s):
            while True:
                res = await self.get("tx_get", {"hash": tx_hash})
                if res is not None and res.get("committed"):
                    return res
                await trio.sleep(0.25)
        return None


@dataclass(frozen=True)
class Signed:
    """A verified JWS request (RFC 8555 §6.2)."""

    payload: bytes
    jwk: jwk.JWK
    account: st.Account | None
    header: acme_jws.Header

    def json(self) -> dict[str, Any]:
        if not self.payload:
            return {}
        try:
            obj = json.loads(self.payload)
        except ValueError:
            raise Problem(400, "malformed", "the JWS payload is not JSON") from None
        if not isinstance(obj, dict):
            raise Problem(400, "malformed", "the JWS payload is not a JSON object")
        return obj


class AcmeServer:
    def __init__(self, cfg: ServerConfig, key: SigningKey, db: st.Store) -> None:
        self.cfg = cfg
        self.key = key
        self.db = db
        self.ledger = Ledger(cfg, key)
        self._x25519_sk = x25519_secret(key.seed)
        self._nonces: OrderedDict[str, None] = OrderedDict()
        self._finalize_lock = trio.Lock()
        self._answer_lock = trio.Lock()
        b = cfg.base_url
        self.urls = {
            "newNonce": f"{b}/acme/new-nonce",
            "newAccount": f"{b}/acme/new-account",
            "newOrder": f"{b}/acme/new-order",
            "revokeCert": f"{b}/acme/revoke-cert",
            "keyChange": f"{b}/acme/key-change",
            "renewalInfo": f"{b}/acme/renewal-info",
        }
        routes = [
            Route("/directory", self._wrap(self.directory), methods=["GET"]),
            Route("/dpkid", self._wrap(self.server_info), methods=["GET"]),
            Route("/acme/new-nonce", self._wrap(self.new_nonce), methods=["GET", "HEAD"]),
            Route("/acme/new-account", self._wrap(self.new_account), methods=["POST"]),
            Route("/acme/new-order", self._wrap(self.new_order), methods=["POST"]),
            Route("/acme/revoke-cert", self._wrap(self.revoke_cert), methods=["POST"]),
            Route("/acme/key-change", self._wrap(self.key_change), methods=["POST"]),
            Route("/acme/renewal-info/{cid}", self._wrap(self.renewal_info), methods=["GET"]),
            Route("/acme/acct/{aid}", self._wrap(self.account), methods=["POST"]),
            Route("/acme/acct/{aid}/orders", self._wrap(self.account_orders), methods=["POST"]),
            Route("/acme/order/{oid}", self._wrap(self.order), methods=["POST"]),
            Route("/acme/order/{oid}/finalize", self._wrap(self.finalize), methods=["POST"]),
            Route("/acme/authz/{zid}", self._wrap(self.authz), methods=["POST"]),
            Route("/acme/chall/{zid}/{ctype}", self._wrap(self.challenge), methods=["POST"]),
            Route("/acme/cert/{oid}", self._wrap(self.certificate), methods=["POST"]),
        ]
        self.app = Starlette(routes=routes)

    # ------------------------------------------------------------ plumbing
    def _nonce(self) -> str:
        n = _b64(os.urandom(16))
        self._nonces[n] = None
        while len(self._nonces) > MAX_NONCES:
            self._nonces.popitem(last=False)
        return n

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {
            "Replay-Nonce": self._nonce(),
            "Link": f'<{self.cfg.base_url}/directory>;rel="index"',
            "Cache-Control": "no-store",
        }
        h.update(extra or {})
        return h

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse(obj, status_code=status, headers=self._headers(headers))

    def _wrap(self, fn: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except Problem as p:
                if p.status >= 500:
                    log.warning("acme_problem", path=request.url.path, type=p.typ, detail=p.detail)
                return JSONResponse(
                    p.doc(),
                    status_code=p.status,
                    headers=self._headers(p.headers),
                    media_type="application/problem+json",
                )
            except Exception as e:  # a bug must not take the server down
                log.exception("acme_internal_error", path=request.url.path)
                return JSONResponse(
                    Problem(500, "serverInternal", f"internal error: {type(e).__name__}").doc(),
                    status_code=500,
                    headers=self._headers(),
                    media_type="application/problem+json",
                )

        return endpoint

    def _url(self, request: Request) -> str:
        return self.cfg.base_url + request.url.path

    async def _verify(
        self, request: Request, *, jwk_ok: bool = False, kid_ok: bool = True
    ) -> Signed:
        """RFC 8555 §6.2-6.5: content type, flattened JWS with every parameter
        protected, an account-key algorithm matching its key, the request's
        URL, a fresh nonce, and exactly one of jwk (where allowed) and kid."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/jose+json":
            raise Problem(415, "malformed", "the content type must be application/jose+json")
        body = await self._body(request)
        try:
            outer = json.loads(body)
        except ValueError:
            raise Problem(400, "malformed", "the request body is not JSON") from None
        if not isinstance(outer, dict) or set(outer) != {"protected", "payload", "signature"}:
            raise Problem(
                400, "malformed", "expected a flattened JWS: protected, payload and signature only"
            )
        try:
            jws = acme_jws.JWS.from_json(outer)
        except (errors.DeserializationError, ValueError, TypeError, KeyError) as e:
            raise Problem(400, "malformed", f"bad JWS: {e}") from None
        return await self._check_jws(request, jws, jwk_ok=jwk_ok, kid_ok=kid_ok)

    async def _body(self, request: Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise Problem(413, "malformed", f"the request body exceeds {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _check_jws(
        self, request: Request, jws: acme_jws.JWS, *, jwk_ok: bool, kid_ok: bool
    ) -> Signed:
        sig = jws.signature
        h: acme_jws.Header = sig.combined
        alg = h.alg
        if alg is None or alg.name not in ACCOUNT_ALGS:
            raise Problem(
                400,
                "badSignatureAlgorithm",
                f"algorithm {getattr(alg, 'name', None)!r} is not accepted",
                extra={"algorithms": sorted(ACCOUNT_ALGS)},
            )
        if h.url != self._url(request):
            raise Problem(401, "unauthorized", f"the JWS url {h.url!r} is not this request's URL")
        if (h.jwk is None) == (h.kid is None):
            raise Problem(400, "malformed", "the JWS must carry exactly one of jwk and kid")
        account = None
        if h.jwk is not None:
            if not jwk_ok:
                raise Problem(
                    400, "malformed", "this request must be signed with the account (kid)"
                )
            key = h.jwk
        else:
            if not kid_ok:
                raise Problem(400, "malformed", "this request must carry the account key (jwk)")
            account = self._account_for_kid(str(h.kid))
            key = jwk.JWK.from_json(account.jwk)
        if not isinstance(key, alg.kty):
            raise Problem(400, "badSignatureAlgorithm", f"{alg.name} does not fit a {key.typ} key")
        try:
            good = jws.verify(key)
        except (errors.Error, ValueError, TypeError):
            good = False
        if not good:
            raise Problem(400, "malformed", "the JWS signature does not verify")
        nonce = _b64(h.nonce) if h.nonce else ""
        if nonce not in self._nonces:
            raise Problem(
                400, "badNonce", "the nonce is unknown or was used already; use a fresh one"
            )
        del self._nonces[nonce]  # single use (RFC 8555 §6.5)
        if account is not None and account.status != "valid":
            raise Problem(401, "unauthorized", f"the account is {account.status}")
        return Signed(jws.payload, key, account, h)

    def _account_for_kid(self, kid: str) -> st.Account:
        prefix = f"{self.cfg.base_url}/acme/acct/"
        a = self.db.account(kid[len(prefix) :]) if kid.startswith(prefix) else None
        if a is None:
            raise Problem(400, "accountDoesNotExist", f"no account {kid!r}")
        return a

    def _acct_url(self, a: st.Account) -> str:
        return f"{self.cfg.base_url}/acme/acct/{a.id}"

    async def _grant(self, a: st.Account) -> dict[str, Any]:
        """The account's grant, which must still let this server act and pay."""
        res = await self.ledger.get("grant_get", {"grant_id": a.grant_id})
        if res is None:
            raise Problem(401, "unauthorized", f"grant {a.grant_id} is not on the ledger")
        g: dict[str, Any] = res["grant"]
        if g["status_at_head"] != "active":
            raise Problem(
                401,
                "unauthorized",
                f"the dpkid account's grant {a.grant_id} is {g['status_at_head']}",
            )
        return g

    async def _can_pay(self, a: st.Account, amount: int) -> None:
        """Refuse up front what the owner's balance or the grant cannot pay, so
        the client gets the reason now rather than a failed order later."""
        g = await self._grant(a)
        left = int(g["spend_limit"]) - int(g["spent"])
        acct = await self.ledger.call("account_get", {"address": a.owner})
        if int(acct["balance"]) < amount:
            raise Problem(
                403,
                "unauthorized",
                f"dpkid account {a.owner} holds {acct['balance']}, this needs {amount}: "
                "fund it with `dpkid account transfer`",
            )
        if left < amount:
            raise Problem(
                403,
                "unauthorized",
                f"grant {a.grant_id} has {left} left of its spend limit, this needs {amount}: "
                "make a new one with `dpkid acme eab`",
            )

    # ------------------------------------------------------------ directory, nonces
    async def directory(self, request: Request) -> Response:
        meta = {"externalAccountRequired": True, "website": f"{self.cfg.base_url}/dpkid"}
        return JSONResponse({**self.urls, "meta": meta}, headers={"Cache-Control": "no-store"})

    async def server_info(self, request: Request) -> Response:
        """Not ACME: what `dpkid acme eab` needs to make a grant for this server."""
        return JSONResponse(
            {
                "chain_id": self.ledger.chain_id,
                "delegate_pubkey": self.key.public_key.hex(),
                "delegate_address": self.key.address.hex(),
                "directory": f"{self.cfg.base_url}/directory",
            }
        )

    async def new_nonce(self, request: Request) -> Response:
        status = 200 if request.method == "HEAD" else 204
        return Response(status_code=status, headers=self._headers())

    # ------------------------------------------------------------ accounts
    def _account_json(self, a: st.Account) -> dict[str, Any]:
        return {
            "status": a.status,
            "contact": a.contact,
            "orders": f"{self._acct_url(a)}/orders",
            "termsOfServiceAgreed": True,
            # Not ACME: the ledger account that owns and pays, and its grant.
            "dpkidAccount": a.owner,
            "dpkidGrant": a.grant_id,
        }

    def _contacts(self, reg: dict[str, Any]) -> list[str]:
        contact = reg.get("contact", [])
        if not isinstance(contact, list) or len(contact) > MAX_CONTACTS:
            raise Problem(400, "invalidContact", f"at most {MAX_CONTACTS} contacts")
        for c in contact:
            if not isinstance(c, str) or not c.startswith("mailto:") or len(c) > 256:
                raise Problem(400, "unsupportedContact", f"only mailto: contacts: {c!r}")
        return list(contact)

    async def new_account(self, request: Request) -> Response:
        s = await self._verify(request, jwk_ok=True, kid_ok=False)
        raw = s.json()
        try:
            reg = messages.Registration.from_json(raw)
        except (errors.DeserializationError, ValueError, TypeError) as e:
            raise Problem(400, "malformed", f"bad account object: {e}") from None
        thumb = thumbprint_b64(s.jwk)
        existing = self.db.account_by_thumbprint(thumb)
        if existing is not None:
            return self._json(
                self._account_json(existing), 200, {"Location": self._acct_url(existing)}
            )
        if reg.only_return_existing:
            raise Problem(400, "accountDoesNotExist", "no account has this key")
        eab = raw.get("externalAccountBinding")
        if eab is None:
            raise Problem(
                400,
                "externalAccountRequired",
                "bind a dpkid account: `dpkid acme eab --account-key KEY --server "
                f"{self.cfg.base_url}/directory` prints --eab-kid and --eab-hmac-key",
            )
        grant = await self._check_eab(eab, s.jwk, self._url(request))
        a = st.Account(
            id=_b64(os.urandom(12)),
            thumbprint=thumb,
            jwk=s.jwk.public_key().to_json(),
            status="valid",
            contact=self._contacts(raw),
            grant_id=grant["grant_id"],
            owner=grant["owner"],
            owner_pubkey=grant["owner_pubkey"],
            created_ms=_now_ms(),
        )
        try:
            self.db.add_account(a)
        except Exception:  # sqlite3.IntegrityError: a race on the same grant or key
            raise Problem(
                409, "unauthorized", "this EAB key or account key was just bound"
            ) from None
        log.info("acme_account", account=a.id, owner=a.owner, grant=a.grant_id)
        return self._json(self._account_json(a), 201, {"Location": self._acct_url(a)})

    async def _check_eab(self, eab: Any, account_key: jwk.JWK, url: str) -> dict[str, Any]:
        """RFC 8555 §7.3.4: a MAC'd JWS over the account key, whose key id is
        a grant to this server and whose MAC key is the one sealed in it."""
        if not isinstance(eab, dict) or set(eab) != {"protected", "payload", "signature"}:
            raise Problem(400, "malformed", "externalAccountBinding must be a flattened JWS")
        try:
            inner = acme_jws.JWS.from_json(eab)
        except (errors.DeserializationError, ValueError, TypeError, KeyError) as e:
            raise Problem(400, "malformed", f"bad externalAccountBinding: {e}") from None
        h: acme_jws.Header = inner.signature.combined
        if h.alg is None or h.alg.name not in EAB_ALGS:
            raise Problem(400, "malformed", "externalAccountBinding must use HS256, HS384 or HS512")
        if h.nonce is not None or h.url != url:
            raise Problem(
                400, "malformed", "externalAccountBinding: no nonce, and the newAccount url"
            )
        kid = str(h.kid or "").lower()
        if len(kid) != 64 or any(ch not in "0123456789abcdef" for ch in kid):
            raise Problem(401, "unauthorized", f"unknown EAB key id {h.kid!r}: expected a grant id")
        res = await self.ledger.get("grant_get", {"grant_id": kid})
        if res is None:
            raise Problem(401, "unauthorized", f"EAB key id {kid}: no such grant on the ledger")
        g: dict[str, Any] = res["grant"]
        if g["delegate"] != self.key.public_key.hex():
            raise Problem(401, "unauthorized", "this grant names another server's key as delegate")
        if g["status_at_head"] != "active":
            raise Problem(401, "unauthorized", f"this grant is {g['status_at_head']}")
        try:
            box = nacl.public.SealedBox(nacl.public.PrivateKey(self._x25519_sk))
            mac_key = bytes(box.decrypt(bytes.fromhex(g["sealed"])))
        except (nacl.exceptions.CryptoError, ValueError):
            raise Problem(
                401, "unauthorized", "the grant's sealed EAB key is not for this server"
            ) from None
        if not inner.verify(jwk.JWKOct(key=mac_key)):
            raise Problem(401, "unauthorized", "the externalAccountBinding MAC does not verify")
        try:
            bound: jwk.JWK = jwk.JWK.from_json(json.loads(inner.payload))  # type: ignore[assignment]
        except (ValueError, errors.DeserializationError):
            raise Problem(400, "malformed", "externalAccountBinding payload is not a JWK") from None
        if bound.thumbprint() != account_key.thumbprint():
            raise Problem(401, "unauthorized", "externalAccountBinding binds another account key")
        if self.db.account_by_grant(kid) is not None:
            raise Problem(
                401, "unauthorized", "this EAB key is bound to another ACME account already"
            )
        return g

    async def account(self, request: Request) -> Response:
        s = await self._verify(request)
        assert s.account is not None
        if s.account.id != request.path_params["aid"]:
            raise Problem(401, "unauthorized", "an account can read and change only itself")
        upd = s.json()
        if "contact" in upd:
            self.db.update_account(s.account.id, contact=self._contacts(upd))
        if upd.get("status") == "deactivated":
            self.db.update_account(s.account.id, status="deactivated")
        elif "status" in upd:
            raise Problem(400, "malformed", "an account's status can only become deactivated")
        a = self.db.account(s.account.id)
        assert a is not None
        return self._json(self._account_json(a), 200, {"Location": self._acct_url(a)})

    async def account_orders(self, request: Request) -> Response:
        s = await self._verify(request)
        assert s.account is not None
        if s.account.id != request.path_params["aid"]:
            raise Problem(401, "unauthorized", "an account can list only its own orders")
        ids = self.db.orders_of(s.account.id, MAX_ORDERS_LISTED)
        return self._json({"orders": [f"{self.cfg.base_url}/acme/order/{o}" for o in ids]})

    async def key_change(self, request: Request) -> Response:
        """RFC 8555 §7.3.5: the inner JWS, signed by the new key, names the
        account and its old key."""
        s = await self._verify(request)
        assert s.account is not None
        try:
            inner = acme_jws.JWS.from_json(json.loads(s.payload))
        except (ValueError, TypeError, KeyError, errors.DeserializationError) as e:
            raise Problem(400, "malformed", f"the key change payload is not a JWS: {e}") from None
        h: acme_jws.Header = inner.signature.combined
        if h.jwk is None or h.kid is not None or h.nonce is not None:
            raise Problem(
                400, "malformed", "the inner JWS carries the new jwk, no kid and no nonce"
            )
        if h.url != self._url(request):
            raise Problem(400, "malformed", "the inner JWS url must be the keyChange URL")
        if h.alg is None or h.alg.name not in ACCOUNT_ALGS or not isinstance(h.jwk, h.alg.kty):
            raise Problem(400, "badSignatureAlgorithm", "the new key's algorithm is not accepted")
        if not inner.verify(h.jwk):
            raise Problem(400, "malformed", "the inner JWS signature does not verify")
        try:
            body = json.loads(inner.payload)
            old: jwk.JWK = jwk.JWK.from_json(body["oldKey"])  # type: ignore[assignment]
        except (ValueError, TypeError, KeyError, errors.DeserializationError):
            raise Problem(400, "malformed", "the inner payload needs account and oldKey") from None
        if body.get("account") != self._acct_url(s.account):
            raise Problem(400, "malformed", "the inner payload names another account")
        if old.thumbprint() != s.jwk.thumbprint():
            raise Problem(400, "malformed", "oldKey is not the account's current key")
        thumb = thumbprint_b64(h.jwk)
        other = self.db.account_by_thumbprint(thumb)
        if other is not None:
            raise Problem(
                409,
                "conflict",
                "the new key belongs to an account",
                {"Location": self._acct_url(other)},
            )
        self.db.update_account(s.account.id, jwk=h.jwk.public_key().to_json(), thumbprint=thumb)
        a = self.db.account(s.account.id)
        assert a is not None
        log.info("acme_key_change", account=a.id)
        return self._json(self._account_json(a), 200, {"Location": self._acct_url(a)})

    # ------------------------------------------------------------ orders
    def _ledger_names(self, identifiers: Any) -> list[str]:
        if not isinstance(identifiers, list) or not 1 <= len(identifiers) <= MAX_IDENTIFIERS:
            raise Problem(400, "malformed", f"an order names 1 to {MAX_IDENTIFIERS} identifiers")
        names = []
        for ident in identifiers:
            if not isinstance(ident, dict) or ident.get("type") != "dns":
                raise Problem(400, "unsupportedIdentifier", f"only dns identifiers: {ident!r:.80}")
            value = ident.get("value")
            if not isinstance(value, str):
                raise Problem(400, "malformed", "an identifier's value is a string")
            try:
                names.append(validate_domain(value.lower().rstrip(".")))
            except DomainError as e:
                raise Problem(400, "rejectedIdentifier", f"{value!r:.80}: {e}") from None
        try:
            return validate_domain_list(sorted(set(names)), MAX_IDENTIFIERS)
        except DomainError as e:
            raise Problem(400, "rejectedIdentifier", str(e)) from None

    async def new_order(self, request: Request) -> Response:
        s = await self._verify(request)
        a = s.account
        assert a is not None
        p = s.json()
        if p.get("notBefore") or p.get("notAfter"):
            raise Problem(400, "malformed", "notBefore and notAfter are set by the ledger's policy")
        names = self._ledger_names(p.get("identifiers"))
        await self._grant(a)
        replaces = ""
        if "replaces" in p:
            replaces = await self._replaced(a, p["replaces"], names)
        now = _now_ms()
        authz_ids = [await self._authz_for(a, n, now) for n in names]
        o = st.Order(
            id=_b64(os.urandom(12)),
            account_id=a.id,
            names=names,
            authz_ids=authz_ids,
            replaces=replaces,
            tx_hash="",
            app_id="",
            error=None,
            created_ms=now,
            expires_ms=now + ORDER_TTL_MS,
        )
        self.db.add_order(o)
        view, _ = await self._order_view(o)
        return self._json(view, 201, {"Location": f"{self.cfg.base_url}/acme/order/{o.id}"})

    async def _replaced(self, a: st.Account, cert_ref: Any, names: list[str]) -> str:
        """RFC 9773 §5: the certificate an order replaces, renewed on the ledger."""
        cert_id = self._cert_for_ari_id(cert_ref)
        res = await self.ledger.get("cert_get", {"cert_id": cert_id})
        if res is None:
            raise Problem(404, "malformed", "the replaced certificate is not on the ledger")
        c = res["certificate"]
        if c["owner"] != a.owner:
            raise Problem(
                403, "unauthorized", "the replaced certificate belongs to another account"
            )
        if c["superseded_by"]:
            raise Problem(409, "alreadyReplaced", f"certificate {cert_id} was renewed already")
        if c["status"] == "revoked":
            raise Problem(400, "malformed", "a revoked certificate is not renewed: order anew")
        if sorted(c["domains"]) != names:
            raise Problem(
                400, "malformed", "a replacing order names the replaced certificate's names"
            )
        return cert_id

    async def _authz_for(self, a: st.Account, name: str, now: int) -> str:
        """A valid authorization of the name that lasts, else a new pending one."""
        for z in self.db.answered_authzs(a.id, name):
            res = await self.ledger.get("authz_get", {"authz_id": z.ledger_id})
            if res is None:
                continue
            la = res["authorization"]
            if (
                la["status_at_head"] == "valid"
                and int(la["valid_until_ms"]) > now + REUSE_MARGIN_MS
            ):
                return z.id
        wildcard = name.startswith("*.")
        owner_pk = bytes.fromhex(a.owner_pubkey)
        methods = ["dns-01"] if wildcard else ["http-01", "dns-01"]
        z = st.Authz(
            id=_b64(os.urandom(12)),
            account_id=a.id,
            name=name,
            wildcard=wildcard,
            # Bound to the owner's key, as the ledger requires (SPEC §7.9).
            tokens={m: acme_token_for(owner_pk, os.urandom(16)) for m in methods},
            ledger_id="",
            method="",
            tx_hash="",
            deactivated=False,
            created_ms=now,
        )
        self.db.add_authz(z)
        return z.id

    def _own_order(self, a: st.Account | None, oid: str) -> st.Order:
        o = self.db.order(oid)
        if o is None or a is None or o.account_id != a.id:
            raise Problem(404, "malformed", "no such order for this account")
        return o

    async def order(self, request: Request) -> Response:
        s = await self._verify(request)
        o = self._own_order(s.account, request.path_params["oid"])
        view, status = await self._order_view(o)
        extra = {"Retry-After": str(self.cfg.retry_after_s)} if status == "processing" else {}
        return self._json(view, 200, extra)

    async def _order_view(self, o: st.Order) -> tuple[dict[str, Any], str]:
        status, error, cert_url = await self._order_status(o)
        view: dict[str, Any] = {
            "status": status,
            "expires": _rfc3339(o.expires_ms),
            "identifiers": [{"type": "dns", "value": n} for n in o.names],
            "authorizations": [f"{self.cfg.base_url}/acme/authz/{z}" for z in o.authz_ids],
            "finalize": f"{self.cfg.base_url}/acme/order/{o.id}/finalize",
        }
        if o.replaces:
            view["replaces"] = o.replaces
        if cert_url:
            view["certificate"] = cert_url
        if error:
            view["error"] = error
        if o.app_id:
            view["dpkidApplication"] = o.app_id  # not ACME: for `dpkid cert status`
        return view, status

    async def _order_status(self, o: st.Order) -> tuple[str, dict[str, Any] | None, str]:
        """RFC 8555 §7.1.6 from the ledger: pending, ready, processing, valid, invalid."""
        if o.error:
            return "invalid", o.error, ""
        if o.tx_hash:
            return await self._finalized_status(o)
        if _now_ms() >= o.expires_ms:
            return "invalid", {"type": ERR + "malformed", "detail": "the order expired"}, ""
        statuses = []
        for zid in o.authz_ids:
            z = self.db.authz(zid)
            assert z is not None
            zs, zerr = await self._authz_status(z)
            if zs in ("invalid", "expired", "deactivated", "revoked"):
                err = zerr or {"type": ERR + "unauthorized", "detail": f"authorization {zs}"}
                return "invalid", {**err, "detail": f"{z.name}: {err.get('detail', zs)}"}, ""
            statuses.append(zs)
        return ("ready" if all(x == "valid" for x in statuses) else "pending"), None, ""

    async def _finalized_status(self, o: st.Order) -> tuple[str, dict[str, Any] | None, str]:
        tx = await self.ledger.get("tx_get", {"hash": o.tx_hash})
        if tx is None or not tx.get("committed"):
            if tx is not None and tx.get("dropped"):
                return self._fail(o, "serverInternal", "the application transaction was dropped")
            return "processing", None, ""
        if int(tx["code"]) != 0:
            return self._fail(
                o,
                "unauthorized",
                f"the ledger refused the application: {tx['code_name']}: {tx['log']}",
            )
        res = await self.ledger.get("application_get", {"app_id": o.app_id})
        if res is None:
            return "processing", None, ""
        app = res["application"]
        if app["status"] in ("rejected", "expired"):
            return self._fail(
                o, "rejectedIdentifier", f"application {app['status']}: {app['close_reason']}"
            )
        if app["status"] != "issued":
            return "processing", None, ""
        x = await self.ledger.get("cert_x509", {"cert_id": app["cert_id"]})
        if x is None:
            return "processing", None, ""  # issued; the validators sign within a few blocks
        leaf = x509.load_der_x509_certificate(bytes.fromhex(x["leaf_der"]))
        self.db.add_cert(format(leaf.serial_number, "x"), app["cert_id"], o.account_id, o.id)
        return "valid", None, f"{self.cfg.base_url}/acme/cert/{o.id}"

    def _fail(self, o: st.Order, typ: str, detail: str) -> tuple[str, dict[str, Any], str]:
        err = {"type": ERR + typ, "detail": detail}
        self.db.set_order_error(o.id, err)
        return "invalid", err, ""

    async def finalize(self, request: Request) -> Response:
        s = await self._verify(request)
        a = s.account
        assert a is not None
        o = self._own_order(a, request.path_params["oid"])
        csr = self._csr(s.json(), o)
        # One finalize at a time: the status check, the submission and the
        # mark must not interleave, or two requests could pay two escrows.
        async with self._finalize_lock:
            return await self._finalize(a, o, csr)

    async def _finalize(
        self, a: st.Account, o: st.Order, csr: x509.CertificateSigningRequest
    ) -> Response:
        o = self._own_order(a, o.id)  # re-read under the lock
        status, _, _ = await self._order_status(o)
        if status != "ready":
            raise Problem(403, "orderNotReady", f"the order is {status}, not ready")
        spki = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            parse_spki(spki)
        except SubjectKeyError as e:
            raise Problem(400, "badCSR", f"the CSR's key: {e}") from None
        p = self.cfg.policy
        await self._can_pay(a, p.min_tx_fee + p.fee_dv)
        ledger_ids = []
        for zid in o.authz_ids:
            z = self.db.authz(zid)
            assert z is not None
            ledger_ids.append(bytes.fromhex(z.ledger_id))
        days = min(self.cfg.validity_days, p.max_validity_days)
        body: CertApply | CertRenew
        if o.replaces:
            body = CertRenew(bytes.fromhex(o.replaces), days, p.fee_dv, spki, ledger_ids)
        else:
            body = CertApply("DV", o.names, spki, days, p.fee_dv, None, ledger_ids)
        h = await self.ledger.submit(a.grant_id, body)
        app_id = sha256(APP_TAG + bytes.fromhex(h)).hex()
        if not self.db.set_order_finalized(o.id, h, app_id):
            raise Problem(403, "orderNotReady", "the order was finalized already")
        log.info("acme_finalize", order=o.id, tx=h, app=app_id, renews=o.replaces or None)
        o2 = self.db.order(o.id)
        assert o2 is not None
        view, status = await self._order_view(o2)
        return self._json(
            view,
            200,
            {
                "Location": f"{self.cfg.base_url}/acme/order/{o.id}",
                "Retry-After": str(self.cfg.retry_after_s),
            },
        )

    def _csr(self, payload: dict[str, Any], o: st.Order) -> x509.CertificateSigningRequest:
        try:
            csr = x509.load_der_x509_csr(_unb64(payload["csr"]))
        except (KeyError, ValueError, TypeError) as e:
            raise Problem(400, "badCSR", f"the CSR does not parse: {e}") from None
        if not csr.is_signature_valid:
            raise Problem(400, "badCSR", "the CSR's signature does not verify")
        names: set[str] = set()
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names |= {n.lower() for n in san.get_values_for_type(x509.DNSName)}
            if san.get_values_for_type(x509.IPAddress):
                raise Problem(400, "badCSR", "the CSR names IP addresses; dpkid certifies names")
        except x509.ExtensionNotFound:
            pass
        for cn in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
            names.add(str(cn.value).lower())
        if names != set(o.names):
            extra = sorted(names - set(o.names))
            missing = sorted(set(o.names) - names)
            raise Problem(
                400,
                "badCSR",
                f"the CSR's names must be the order's: not authorized {extra}, missing {missing}",
            )
        return csr

    async def certificate(self, request: Request) -> Response:
        s = await self._verify(request)
        o = self._own_order(s.account, request.path_params["oid"])
        status, _, _ = await self._order_status(o)
        if status != "valid":
            raise Problem(404, "malformed", f"the order is {status}: no certificate yet")
        app = await self.ledger.get("application_get", {"app_id": o.app_id})
        assert app is not None
        x = await self.ledger.get("cert_x509", {"cert_id": app["application"]["cert_id"]})
        if x is None:
            raise Problem(503, "serverInternal", "the certificate is not signed yet")
        return Response(
            x["chain_pem"].encode(),
            media_type="application/pem-certificate-chain",
            headers=self._headers(),
        )

    # ------------------------------------------------------------ authorizations
    def _own_authz(self, a: st.Account | None, zid: str) -> st.Authz:
        z = self.db.authz(zid)
        if z is None or a is None or z.account_id != a.id:
            raise Problem(404, "malformed", "no such authorization for this account")
        return z

    async def _ledger_authz(self, z: st.Authz) -> dict[str, Any] | None:
        if not z.ledger_id:
            return None
        res = await self.ledger.get("authz_get", {"authz_id": z.ledger_id})
        return None if res is None else res["authorization"]

    async def _authz_status(self, z: st.Authz) -> tuple[str, dict[str, Any] | None]:
        if z.deactivated:
            return "deactivated", None
        if not z.ledger_id:
            if _now_ms() >= z.created_ms + PENDING_AUTHZ_TTL_MS:
                return "expired", None
            return "pending", None
        la = await self._ledger_authz(z)
        if la is None:
            # Requested, not on the ledger: in a block soon, or refused.
            tx = await self.ledger.get("tx_get", {"hash": z.tx_hash})
            if tx is not None and tx.get("committed") and int(tx["code"]) != 0:
                why = f"the ledger refused the authorization: {tx['code_name']}: {tx['log']}"
                return "invalid", {"type": ERR + "unauthorized", "detail": why}
            if tx is not None and not tx.get("committed") and tx.get("dropped"):
                return "invalid", {"type": ERR + "serverInternal", "detail": "request dropped"}
            return "pending", None
        st_ = str(la["status_at_head"])
        return st_, (self._checks_error(la) if st_ == "invalid" else None)

    def _checks_error(self, la: dict[str, Any]) -> dict[str, Any]:
        """Each validator's failed check, in ACME's problem vocabulary."""
        bad = [c for c in la["checks"] if not c["ok"]]
        if not bad:
            return {
                "type": ERR + "unauthorized",
                "detail": "the validators did not confirm control",
            }
        common = Counter(c["problem"] or "unauthorized" for c in bad).most_common(1)[0][0]
        detail = "; ".join(
            f"validator {c['validator'][:12]}: {c['problem']}: {c['detail']}" for c in bad[:16]
        )
        return {"type": ERR + common, "detail": detail}

    async def _authz_view(self, z: st.Authz) -> dict[str, Any]:
        status, err = await self._authz_status(z)
        la = await self._ledger_authz(z)
        expires = z.created_ms + PENDING_AUTHZ_TTL_MS
        if la is not None and int(la.get("valid_until_ms", 0)):
            expires = int(la["valid_until_ms"])
        challs = []
        for m, token in sorted(z.tokens.items()):
            c: dict[str, Any] = {
                "type": m,
                "url": f"{self.cfg.base_url}/acme/chall/{z.id}/{m}",
                "token": token,
                "status": "pending",
            }
            if m == z.method:
                c["status"] = {"pending": "processing", "valid": "valid"}.get(status, "invalid")
                if status == "valid" and la is not None:
                    c["validated"] = _rfc3339(max(int(x["time_ms"]) for x in la["checks"]))
                if err:
                    c["error"] = err
            challs.append(c)
        view: dict[str, Any] = {
            "identifier": {"type": "dns", "value": z.name.removeprefix("*.")},
            "status": status,
            "expires": _rfc3339(expires),
            "challenges": challs,
        }
        if z.wildcard:
            view["wildcard"] = True
        if z.ledger_id:
            view["dpkidAuthorization"] = z.ledger_id  # not ACME: for `dpkid authz status`
        return view

    async def authz(self, request: Request) -> Response:
        s = await self._verify(request)
        z = self._own_authz(s.account, request.path_params["zid"])
        if s.json().get("status") == "deactivated":
            self.db.deactivate_authz(z.id)
            z = self._own_authz(s.account, z.id)
        return self._json(await self._authz_view(z))

    async def challenge(self, request: Request) -> Response:
        s = await self._verify(request)
        a = s.account
        assert a is not None
        z = self._own_authz(a, request.path_params["zid"])
        ctype = request.path_params["ctype"]
        if ctype not in z.tokens:
            raise Problem(404, "malformed", f"this authorization has no {ctype} challenge")
        async with self._answer_lock:
            z = await self._answer(s, a, z, ctype)
        view = await self._authz_view(z)
        (c,) = [c for c in view["challenges"] if c["type"] == ctype]
        up = f'<{self.cfg.base_url}/acme/authz/{z.id}>;rel="up"'
        headers = {"Link": f'<{self.cfg.base_url}/directory>;rel="index", {up}'}
        if c["status"] == "processing":
            headers["Retry-After"] = str(self.cfg.retry_after_s)
        return self._json(c, 200, headers)

    async def _answer(self, s: Signed, a: st.Account, z: st.Authz, ctype: str) -> st.Authz:
        """The client says it is ready: ask the validators, once (RFC 8555 §7.5.1)."""
        z = self._own_authz(a, z.id)  # re-read under the lock
        if not s.payload or z.ledger_id:
            return z
        status, _ = await self._authz_status(z)
        if status != "pending":
            raise Problem(403, "malformed", f"the authorization is {status}")
        await self._can_pay(a, self.cfg.policy.min_tx_fee)
        body = AuthzRequest(
            z.name,
            "acme",
            ctype,  # type: ignore[arg-type]
            z.tokens[ctype],
            thumbprint_b64(s.jwk),
        )
        h = await self.ledger.submit(a.grant_id, body)
        ledger_id = sha256(AUTHZ_TAG + bytes.fromhex(h)).hex()
        if self.db.set_authz_answer(z.id, ledger_id, ctype, h):
            log.info("acme_challenge", authz=z.id, method=ctype, tx=h, ledger_authz=ledger_id)
        return self._own_authz(a, z.id)

    # ------------------------------------------------------------ revocation, ARI
    async def _root(self) -> x509.Certificate:
        res = await self.ledger.get("root_get", {})
        if res is None:
            raise Problem(503, "serverInternal", "the validators' root is not signed yet")
        return x509.load_der_x509_certificate(bytes.fromhex(res["root_der"]))

    async def revoke_cert(self, request: Request) -> Response:
        """RFC 8555 §7.6: by the owning account, or by the certificate's key."""
        s = await self._verify(request, jwk_ok=True, kid_ok=True)
        p = s.json()
        try:
            cert = x509.load_der_x509_certificate(_unb64(p["certificate"]))
        except (KeyError, ValueError, TypeError) as e:
            raise Problem(400, "malformed", f"the certificate does not parse: {e}") from None
        reason = p.get("reason", 0)
        if isinstance(reason, bool) or not isinstance(reason, int) or reason not in ALLOWED_REASONS:
            raise Problem(
                400, "badRevocationReason", f"reason {reason!r}: use one of {list(ALLOWED_REASONS)}"
            )
        from dpkid.client.x509 import parse_ledger_ref

        root = await self._root()
        try:
            cert.verify_directly_issued_by(root)
        except Exception:  # InvalidSignature, ValueError, TypeError: not ours either way
            raise Problem(
                404, "malformed", "this certificate was not issued under this chain's root"
            ) from None
        ref = parse_ledger_ref(cert)
        if ref is None or ref.get("chain_id") != self.ledger.chain_id:
            raise Problem(404, "malformed", "this certificate names no ledger record of this chain")
        cert_id = bytes(ref["cert_id"]).hex()
        res = await self.ledger.get("cert_get", {"cert_id": cert_id})
        if res is None:
            raise Problem(404, "malformed", f"certificate {cert_id} is not on the ledger")
        rec = res["certificate"]
        if rec["status"] == "revoked":
            raise Problem(400, "alreadyRevoked", f"certificate {cert_id} is revoked already")
        acting = await self._revoker(s, cert, rec)
        h = await self.ledger.submit(acting.grant_id, Revoke(bytes.fromhex(cert_id), reason))
        done = await self.ledger.wait_committed(h, REVOKE_WAIT_S)
        if done is None:
            raise Problem(503, "serverInternal", f"revocation tx {h} not committed yet; retry")
        if int(done["code"]) != 0:
            raise Problem(
                403, "unauthorized", f"the ledger refused: {done['code_name']}: {done['log']}"
            )
        log.info("acme_revoke", cert=cert_id, tx=h, reason=reason)
        return Response(status_code=200, headers=self._headers())

    async def _revoker(self, s: Signed, cert: x509.Certificate, rec: dict[str, Any]) -> st.Account:
        if s.account is not None:
            if s.account.owner != rec["owner"]:
                raise Problem(
                    403, "unauthorized", "the certificate belongs to another dpkid account"
                )
            return s.account
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            jwk_spki = s.jwk.key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except AttributeError:
            jwk_spki = b""
        if jwk_spki != spki:
            raise Problem(
                403, "unauthorized", "the JWS key is neither an account nor the certificate's"
            )
        for acct in self.db.accounts_of_owner(rec["owner"])[:MAX_OWNER_ACCOUNTS]:
            res = await self.ledger.get("grant_get", {"grant_id": acct.grant_id})
            if res is not None and res["grant"]["status_at_head"] == "active":
                return acct
        raise Problem(
            403,
            "unauthorized",
            "no active grant of the owning dpkid account lets this server act: "
            "use `dpkid cert revoke --cert-key`",
        )

    def _cert_for_ari_id(self, text: Any) -> str:
        """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial DER)."""
        if not isinstance(text, str) or text.count(".") != 1 or len(text) > 200:
            raise Problem(400, "malformed", "a certificate identifier is AKI.serial in base64url")
        _, serial_b64 = text.split(".")
        try:
            serial = int.from_bytes(_unb64(serial_b64), "big")
        except ValueError:
            raise Problem(400, "malformed", "the serial is not base64url") from None
        found = self.db.cert_by_serial(format(serial, "x"))
        if found is None:
            raise Problem(404, "malformed", "this server issued no certificate with that serial")
        return found[0]

    async def renewal_info(self, request: Request) -> Response:
        cert_id = self._cert_for_ari_id(request.path_params["cid"])
        res = await self.ledger.get("cert_get", {"cert_id": cert_id})
        if res is None:
            raise Problem(404, "malformed", "the certificate is not on the ledger")
        c = res["certificate"]
        nb, na = int(c["not_before_ms"]), int(c["not_after_ms"])
        now = int(res["time_ms"])
        if c["status"] == "revoked" or c["superseded_by"]:
            # A window in the past: renew now (RFC 9773 §4.2).
            start, end = now - 3_600_000, now - 60_000
        else:
            life = na - nb
            start, end = na - life // 3, na - life // 6
        body = {"suggestedWindow": {"start": _rfc3339(start), "end": _rfc3339(end)}}
        return JSONResponse(body, headers={"Retry-After": str(self.cfg.ari_retry_after_s)})


async def serve(
    cfg: ServerConfig,
    host: str,
    port: int,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled. Reports the server once it accepts connections."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hyper_serve

    key = load_server_key(cfg.state_dir)
    db = st.Store(cfg.state_dir / DB_FILE)
    server = AcmeServer(cfg, key, db)
    await server.ledger.start()
    hc = Config()
    hc.bind = [f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = None
    hc.h2_max_concurrent_streams = 16
    hc.keep_alive_timeout = 30
    # A client that stops sending mid-request is dropped (slow-loris), and
    # headers are bounded, as every other input is.
    hc.read_timeout = READ_TIMEOUT_S
    hc.h11_max_incomplete_size = 16 * 1024
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hyper_serve, server.app, hc)
            task_status.started(server)
    finally:
        db.close()
