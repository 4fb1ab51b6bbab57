"""The `acme` library (certbot's) as a client of `dpkid acme serve` on a real
4-validator testnet: every error path an ACME client can hit, each with its
RFC 8555 problem type, and the features certbot does not exercise (EdDSA
account keys, key rollover, RFC 9773 renewal information and `replaces`,
revocation by the certificate's key)."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from acme import challenges, errors, messages
from acme import client as acme_client
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from josepy import b64, jwa
from josepy import jwk as jose_jwk

from dpkid.acme.jose import JWKOKP, EdDSA
from dpkid.client.x509 import parse_ledger_ref
from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap
from tests.acmeutil import AcmeNet, acme_net, dpkid_json, wait_until

pytestmark = pytest.mark.slow

ERR = "urn:ietf:params:acme:error:"
REUSE_MS = 25_000  # authorizations expire quickly here, to test expiry


def rsa_jwk() -> jose_jwk.JWKRSA:
    return jose_jwk.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))


def client_for(a: AcmeNet, key: jose_jwk.JWK, alg: Any = jwa.RS256) -> acme_client.ClientV2:
    net = acme_client.ClientNetwork(key, alg=alg, user_agent="dpkid-tests")
    return acme_client.ClientV2(acme_client.ClientV2.get_directory(a.directory, net), net)


def key_of(c: acme_client.ClientV2) -> jose_jwk.JWK:
    k = c.net.key
    assert isinstance(k, jose_jwk.JWK)
    return k


def uri_of(c: acme_client.ClientV2) -> str:
    assert c.net.account is not None
    return str(c.net.account.uri)


def register(a: AcmeNet, c: acme_client.ClientV2, eab: dict[str, Any]) -> None:
    binding = messages.ExternalAccountBinding.from_data(
        key_of(c).public_key(), eab["eab_kid"], eab["eab_hmac_key"], c.directory
    )
    regr = c.new_account(
        messages.NewRegistration.from_data(
            terms_of_service_agreed=True, external_account_binding=binding
        )
    )
    c.net.account = regr


def csr_pem(names: list[str], key: Any = None) -> tuple[bytes, Any]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), key


def problem(exc: BaseException) -> messages.Error:
    assert isinstance(exc, messages.Error), repr(exc)
    return exc


def serve_http01(
    web: ChallengeMap, c: acme_client.ClientV2, order: Any, right: bool = True
) -> None:
    for authzr in order.authorizations:
        for chall in authzr.body.challenges:
            if isinstance(chall.chall, challenges.HTTP01):
                resp, validation = chall.response_and_validation(c.net.key)
                body = validation if right else validation[:-4] + "AAAA"
                web.set_path(authzr.body.identifier.value, chall.path, body)
                c.answer_challenge(chall, resp)


def deadline(s: float = 90) -> datetime.datetime:
    return datetime.datetime.now() + datetime.timedelta(seconds=s)


class Raw:
    """Hand-made JWS requests, for what a well-behaved client never sends."""

    def __init__(self, a: AcmeNet, key: jose_jwk.JWK, alg: Any, kid: str | None = None) -> None:
        self.dir = requests.get(a.directory, timeout=10).json()
        self.key, self.alg, self.kid = key, alg, kid

    def nonce(self) -> bytes:
        r = requests.head(self.dir["newNonce"], timeout=10)
        return b64.b64decode(r.headers["Replay-Nonce"])

    def post(
        self,
        url: str,
        payload: Any,
        nonce: bytes | None = None,
        sign_url: str | None = None,
        mutate: Any = None,
    ) -> requests.Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        jws = acme_jws.JWS.sign(
            body, self.key, self.alg, nonce or self.nonce(), sign_url or url, self.kid
        )
        doc = jws.to_partial_json()
        if mutate:
            doc = mutate(doc)
        return requests.post(
            url, data=json.dumps(doc), headers={"Content-Type": "application/jose+json"}, timeout=60
        )


def expect_problem(r: requests.Response, status: int, typ: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.headers.get("Replay-Nonce"), "every error carries a fresh nonce"
    doc: dict[str, Any] = r.json()
    assert doc["type"] == ERR + typ, doc
    return doc


def test_acme_library_client_every_error_path(tmp_path: Path) -> None:
    web = ChallengeMap()
    with (
        ChallengeHttpServer(web) as http_srv,
        acme_net(
            tmp_path, http_port=http_srv.port, testnet_args=("--authz-reuse-ms", str(REUSE_MS))
        ) as a,
    ):
        names = ["bad.test", "ok.test", "exp.test", "poor.test", "ed.test", "www.ed.test"]
        a.set_a(*names)
        c = client_for(a, rsa_jwk())
        assert c.external_account_required()

        # No EAB: refused with externalAccountRequired, and the fix in the detail.
        with pytest.raises(messages.Error) as ei:
            c.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        assert problem(ei.value).typ == ERR + "externalAccountRequired"
        assert "dpkid acme eab" in (problem(ei.value).detail or "")
        # EAB with the wrong MAC key.
        eab = a.eab()
        wrong = {**eab, "eab_hmac_key": b64.b64encode(b"\x01" * 32).decode()}
        with pytest.raises(messages.Error) as ei:
            register(a, c, wrong)
        assert problem(ei.value).typ == ERR + "unauthorized"
        assert "MAC" in (problem(ei.value).detail or "")
        register(a, c, eab)
        kid = uri_of(c)
        # The same EAB key cannot bind a second ACME account.
        with pytest.raises(messages.Error) as ei:
            register(a, client_for(a, rsa_jwk()), eab)
        assert "bound to another ACME account" in (problem(ei.value).detail or "")

        # Malformed JWS: a flipped signature, a MAC "account" algorithm, the
        # wrong URL, the wrong content type, a reused nonce.
        raw = Raw(a, key_of(c), jwa.RS256, kid)
        acct_url = kid

        def flip(doc: dict[str, Any]) -> dict[str, Any]:
            sig = b64.b64decode(doc["signature"])
            return {**doc, "signature": b64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()}

        expect_problem(raw.post(acct_url, None, mutate=flip), 400, "malformed")
        mac = Raw(a, jose_jwk.JWKOct(key=b"k" * 32), jwa.HS256, kid)
        doc = expect_problem(mac.post(acct_url, None), 400, "badSignatureAlgorithm")
        assert "EdDSA" in doc["algorithms"] and "RS256" in doc["algorithms"]
        expect_problem(raw.post(acct_url, None, sign_url=raw.dir["newOrder"]), 401, "unauthorized")
        r = requests.post(acct_url, data=b"{}", headers={"Content-Type": "application/json"})
        expect_problem(r, 415, "malformed")
        n = raw.nonce()
        assert raw.post(acct_url, None, nonce=n).status_code == 200
        expect_problem(raw.post(acct_url, None, nonce=n), 400, "badNonce")
        # Garbage bodies are answered, not crashed on.
        for junk in (b"", b"\xff\xfe", b"[]", b'{"protected": 1}', b"{" * 5000):
            r = requests.post(
                acct_url, data=junk, headers={"Content-Type": "application/jose+json"}
            )
            expect_problem(r, 400, "malformed")

        # A wrong key authorization: every validator's incorrectResponse, fast.
        pem, _ = csr_pem(["bad.test"])
        order = c.new_order(pem)
        serve_http01(web, c, order, right=False)
        t0 = time.monotonic()
        with pytest.raises(errors.ValidationError) as ve:
            c.poll_authorizations(order, deadline(90))
        assert time.monotonic() - t0 < 60  # fails fast, not at the 7-day TTL
        (failed,) = ve.value.failed_authzrs
        ch = next(x for x in failed.body.challenges if x.error is not None)
        assert ch.error is not None and ch.error.typ == ERR + "incorrectResponse", ch.error
        assert (ch.error.detail or "").count("validator") >= 2, ch.error.detail
        # ...and the same reasons through `dpkid authz status`.
        body = c._post_as_get(failed.uri).json()
        st = dpkid_json("authz", "status", body["dpkidAuthorization"], "--home", a.home)
        assert st["status"] == "invalid", st
        assert any(x["problem"] == "incorrectResponse" for x in st["authorization"]["checks"])
        st = dpkid_json("cert", "status", body["dpkidAuthorization"], "--home", a.home)
        assert st["_rc"] == 1 and st["kind"] == "authorization" and st["status"] == "invalid"
        failures = [x for x in st["record"]["checks"] if not x["ok"]]
        assert len(failures) >= 2 and all(x["detail"] for x in failures), failures

        # A CSR naming a name the order has no authorization for: badCSR.
        pem, key = csr_pem(["ok.test"])
        order = c.new_order(pem)
        serve_http01(web, c, order)
        order = c.poll_authorizations(order, deadline(90))
        evil, _ = csr_pem(["ok.test", "evil.test"], key)
        with pytest.raises(messages.Error) as ei:
            c.finalize_order(order.update(csr_pem=evil), deadline(60))
        assert problem(ei.value).typ == ERR + "badCSR"
        assert "evil.test" in (problem(ei.value).detail or "")
        # The order is still ready: the right CSR gets the certificate.
        order = c.finalize_order(order, deadline(90))
        leaf = x509.load_pem_x509_certificate(order.fullchain_pem.encode())
        assert leaf.subject.rfc4514_string() == "CN=ok.test"

        # Revocation errors: a reason RFC 5280 has but the ledger does not
        # allow, then twice.
        with pytest.raises(messages.Error) as ei:
            c.revoke(leaf, 2)
        assert problem(ei.value).typ == ERR + "badRevocationReason"
        c.revoke(leaf, 4)
        with pytest.raises(messages.Error) as ei:
            c.revoke(leaf, 4)
        assert problem(ei.value).typ == ERR + "alreadyRevoked"

        # An authorization that expired before finalize: the order is invalid.
        pem, _ = csr_pem(["exp.test"])
        order = c.new_order(pem)
        serve_http01(web, c, order)
        order = c.poll_authorizations(order, deadline(90))
        zurl = order.authorizations[0].uri

        def expired() -> bool:
            return bool(c._post_as_get(zurl).json()["status"] == "expired")

        wait_until(expired, REUSE_MS / 1000 + 30, "the authorization to expire")
        with pytest.raises(messages.Error) as ei:
            c.begin_finalization(order)
        assert problem(ei.value).typ == ERR + "orderNotReady"
        with pytest.raises(errors.IssuanceError) as ie:
            c.finalize_order(order, deadline(30))  # polls on after orderNotReady
        assert "exp.test: authorization expired" in (ie.value.error.detail or "")
        assert c._post_as_get(order.uri).json()["status"] == "invalid"

        # An account whose grant cannot pay: refused up front, with the reason.
        poor = client_for(a, rsa_jwk())
        register(a, poor, a.eab(spend_limit=5))
        pem, _ = csr_pem(["poor.test"])
        order = poor.new_order(pem)
        chall = next(
            x for x in order.authorizations[0].body.challenges
            if isinstance(x.chall, challenges.HTTP01)
        )  # fmt: skip
        with pytest.raises(messages.Error) as ei:
            poor.answer_challenge(chall, chall.response(poor.net.key))
        assert problem(ei.value).typ == ERR + "unauthorized"
        assert "spend limit" in (problem(ei.value).detail or "")

        # ---- EdDSA account, renewal information, replaces, key rollover,
        # revocation by the certificate key.
        ed = client_for(a, JWKOKP(key=ed25519.Ed25519PrivateKey.generate()), EdDSA)
        register(a, ed, a.eab())
        pem, key = csr_pem(["ed.test", "www.ed.test"])
        order = ed.new_order(pem)
        serve_http01(web, ed, order)
        order = ed.poll_and_finalize(order, deadline(120))
        chain = order.fullchain_pem.encode()
        first = x509.load_pem_x509_certificate(chain)
        ref = parse_ledger_ref(first)
        assert ref is not None
        rec = dpkid_json("cert", "status", ref["cert_id"].hex(), "--home", a.home)["record"]
        nb, na = first.not_valid_before_utc, first.not_valid_after_utc
        when, _ = ed.renewal_time(chain)
        assert when is not None and nb + (na - nb) * 0.6 < when < na  # inside the window
        # replaces (RFC 9773 §5): a ledger renewal, which supersedes the old one.
        aki = first.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier is not None
        serial = first.serial_number.to_bytes((first.serial_number.bit_length() + 7) // 8, "big")
        ari_id = f"{b64.b64encode(aki.key_identifier).decode()}.{b64.b64encode(serial).decode()}"
        edraw = Raw(a, key_of(ed), EdDSA, uri_of(ed))
        ids = [{"type": "dns", "value": n} for n in ("ed.test", "www.ed.test")]
        r = edraw.post(edraw.dir["newOrder"], {"identifiers": ids, "replaces": ari_id})
        assert r.status_code == 201, r.text
        renewal = messages.OrderResource(
            body=messages.Order.from_json(r.json()),
            uri=r.headers["Location"],
            authorizations=[ed._authzr_from_response(ed._post_as_get(u), uri=u)
                            for u in r.json()["authorizations"]],
            csr_pem=csr_pem(["ed.test", "www.ed.test"], key)[0],
        )  # fmt: skip
        serve_http01(web, ed, renewal)
        renewal = ed.poll_and_finalize(renewal, deadline(120))
        second = x509.load_pem_x509_certificate(renewal.fullchain_pem.encode())
        ref2 = parse_ledger_ref(second)
        assert ref2 is not None
        old = dpkid_json("cert", "status", ref["cert_id"].hex(), "--home", a.home)["record"]
        assert old["superseded_by"] == ref2["cert_id"].hex(), old
        new = dpkid_json("cert", "status", ref2["cert_id"].hex(), "--home", a.home)["record"]
        assert new["renews"] == rec["cert_id"]
        when, _ = ed.renewal_time(chain)  # the replaced one: renew now
        assert when is not None and when <= datetime.datetime.now(datetime.UTC)
        r = edraw.post(edraw.dir["newOrder"], {"identifiers": ids, "replaces": ari_id})
        expect_problem(r, 409, "alreadyReplaced")
        # Key rollover: the new key signs for the account, the old one no longer.
        new_key = JWKOKP(key=ed25519.Ed25519PrivateKey.generate())
        change = {"account": uri_of(ed), "oldKey": key_of(ed).public_key().to_json()}
        inner = acme_jws.JWS.sign(
            json.dumps(change).encode(), new_key, EdDSA, None, edraw.dir["keyChange"], None
        )
        r = edraw.post(edraw.dir["keyChange"], inner.to_partial_json())
        assert r.status_code == 200, r.text
        stale = Raw(a, key_of(ed), EdDSA, None)
        r = stale.post(stale.dir["newAccount"], {"onlyReturnExisting": True})
        expect_problem(r, 400, "accountDoesNotExist")
        fresh = Raw(a, new_key, EdDSA, None)
        r = fresh.post(fresh.dir["newAccount"], {"onlyReturnExisting": True})
        assert r.status_code == 200 and r.headers["Location"] == uri_of(ed)
        # Revocation signed by the certificate's own key (RFC 8555 §7.6).
        by_key = Raw(a, jose_jwk.JWKEC(key=key), jwa.ES256, None)
        der = second.public_bytes(serialization.Encoding.DER)
        r = by_key.post(by_key.dir["revokeCert"], {"certificate": b64.b64encode(der).decode()})
        assert r.status_code == 200, r.text
        gone = dpkid_json("cert", "status", ref2["cert_id"].hex(), "--home", a.home)
        assert gone["status"] == "revoked", gone
