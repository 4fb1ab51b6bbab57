"""`dpkid demo`: the whole system on one machine, in one command.

It writes a 4-validator, 3-endorser testnet, starts a DNS server and an
HTTP challenge server on 127.0.0.1 for the domain checks, starts the four
nodes as separate processes, and then, through the nodes' RPC sockets only:
issues a DV, an OV and an EV certificate with real domain validation and
endorsements, verifies each as a light client, revokes one, withdraws an
endorsement so the EV certificate degrades to DV, and prints what happened.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dpkid.client.lightclient import VerifyError
from dpkid.client.rpc import RpcClientError, call_sync
from dpkid.client.verify import parsed_from_x509, verify_certificate
from dpkid.client.x509 import to_x509
from dpkid.core import codec
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.types import (
    CertApply,
    Endorse,
    EndorseWithdraw,
    OrgIdentity,
    Revoke,
    TxBody,
    sign_tx,
)
from dpkid.daemon.config import read_genesis, read_key
from dpkid.dev.procs import make_testnet, start_node, stop_nodes

START_TIMEOUT_S = 90
STEP_TIMEOUT_S = 120


class DemoError(Exception):
    pass


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    height: int = 0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Endorsed:
    """An organization for an OV/EV certificate and the endorsers who vouch for it."""

    identity: OrgIdentity
    endorsers: list[SigningKey]
    note: str


class Demo:
    def __init__(self, workdir: Path, progress: Callable[[str], None]) -> None:
        self.dir = workdir
        self.progress = progress
        self.procs: list[subprocess.Popen[bytes]] = []
        self.steps: list[Step] = []
        self.dns: Any = None
        self.http: Any = None
        self.nonces: dict[bytes, int] = {}
        self._root: bytes | None = None
        self.x509s: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ plumbing
    def rpc(self, method: str, params: dict[str, Any] | None = None, node: int = 0) -> Any:
        return call_sync(self.homes[node], method, params or {}, timeout_s=20)

    def wait(self, cond: Callable[[], Any], what: str, timeout_s: float = STEP_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                v = cond()
                if v:
                    return v
            except (OSError, RpcClientError, KeyError) as exc:
                last = exc
            time.sleep(0.2)
        raise DemoError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))

    def submit(self, key: SigningKey, body: TxBody, node: int = 0) -> bytes:
        acct = self.rpc("account_get", {"address": key.address.hex()}, node)
        nonce = max(acct["next_nonce"], self.nonces.get(key.address, 0))
        raw = codec.encode(sign_tx(key, self.chain_id, nonce, 10, body))
        self.rpc("tx_submit", {"tx": raw.hex()}, node)
        self.nonces[key.address] = nonce + 1
        return raw

    def wait_tx(self, raw: bytes) -> dict[str, Any]:
        h = sha256(raw).hex()
        got: dict[str, Any] = self.wait(
            lambda: (r := self.rpc("tx_get", {"hash": h})) and r["committed"] and r, f"tx {h[:12]}"
        )
        if got["code"] != 0:
            raise DemoError(f"tx {h[:12]} failed: {got['code_name']}: {got['log']}")
        return got

    def record(self, name: str, ok: bool, detail: str, **data: Any) -> None:
        h = 0
        with contextlib.suppress(OSError, RpcClientError):
            h = int(self.rpc("status")["height"])
        self.steps.append(Step(name, ok, detail, h, data))
        self.progress(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from dpkid.dev.dns_server import DevDnsServer, Zone
        from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap

        self.zone = Zone()
        self.dns = DevDnsServer(self.zone).start()
        self.challenges = ChallengeMap()
        self.http = ChallengeHttpServer(self.challenges).start()
        self.progress(f"challenge servers: DNS {self.dns.address}, HTTP 127.0.0.1:{self.http.port}")
        self.info = make_testnet(
            self.dir / "net",
            4,
            *("--endorsers", "3", "--accounts", "3", "--dns-resolver", self.dns.address),
            *("--http-port", str(self.http.port), "--timeout-commit-ms", "200"),
        )
        self.homes = [Path(p) for p in self.info["nodes"]]
        self.chain_id = self.info["chain_id"]
        self.genesis = read_genesis(self.dir / "net" / "genesis.json")
        self.accounts = [read_key(Path(p)) for p in self.info["account_keys"]]
        self.endorsers = [read_key(Path(p)) for p in self.info["endorser_keys"]]
        for i, home in enumerate(self.homes):
            self.procs.append(start_node(home, self.dir / f"node{i}.log"))
            self.progress(f"started node{i} (pid {self.procs[-1].pid})")
        for i in range(len(self.homes)):

            def committing(i: int = i) -> bool:
                return bool(self.rpc("status", node=i)["height"] >= 1)

            self.wait(committing, f"node{i} to commit", START_TIMEOUT_S)
            self.progress(f"node{i} is committing blocks")

    def stop(self) -> None:
        stop_nodes(self.procs)
        if self.dns is not None:
            self.dns.stop()
        if self.http is not None:
            self.http.stop()

    # ------------------------------------------------------------------ the story
    def publish_challenges(self, app: dict[str, Any], via: str) -> None:
        ch = app["challenge"]
        for d in app["domains"]:
            base = d[2:] if d.startswith("*.") else d
            self.zone.set_a(base, ["127.0.0.1"])
            if via == "http-01":
                self.challenges.set(base, ch["token"], ch["key_authorization"])
            else:
                for rec in ch["dns"]:
                    self.zone.add_txt(rec["name"], rec["value"])

    def apply(
        self, key: SigningKey, typ: str, domain: str, spki: bytes, org: OrgIdentity | None, via: str
    ) -> tuple[bytes, dict[str, Any]]:
        fee = {
            "DV": self.genesis.policy.fee_dv,
            "OV": self.genesis.policy.fee_ov,
            "EV": self.genesis.policy.fee_ev,
        }[typ]
        before = self.rpc("account_get", {"address": key.address.hex()})["balance"]
        raw = self.submit(key, CertApply(typ, [domain], spki, 30, fee, org))  # type: ignore[arg-type]
        self.wait_tx(raw)
        app_id = sha256(b"dpkid/app/v1\x00" + sha256(raw))
        app = self.rpc("application_get", {"app_id": app_id.hex()})["application"]
        self.publish_challenges(app, via)
        return app_id, {"escrow": fee, "balance_before": before}

    def wait_issued(self, app_id: bytes) -> dict[str, Any]:
        def done() -> Any:
            a = self.rpc("application_get", {"app_id": app_id.hex()})["application"]
            if a["status"] in ("rejected", "expired"):
                raise DemoError(
                    f"application {app_id.hex()[:12]} was {a['status']}: {a['close_reason']}"
                )
            return a if a["status"] == "issued" else None

        app: dict[str, Any] = self.wait(done, f"application {app_id.hex()[:12]} to be issued")
        return app

    def verify(self, cert_id: bytes) -> Any:
        # Every node we ask must have a header after the change (a proof is
        # against the latest header, which commits to the state one block back).
        h = int(self.rpc("status")["height"])
        for node in (0, 1, 2):

            def past(node: int = node) -> bool:
                return bool(self.rpc("status", node=node)["height"] > h)

            self.wait(past, f"node{node} past {h}")
        rpc = lambda m, p: self.rpc(m, p, node=1)  # noqa: E731 -- ask a different node than we used
        res = self.rpc("cert_proof", {"cert_id": cert_id.hex()})
        from dpkid.client.lightclient import decode_header
        from dpkid.core.state.proofs import decode_proof, verify_cert

        header = decode_header(res["header_bytes"])
        cert = verify_cert(header.app_hash, cert_id, decode_proof(bytes.fromhex(res["proof"])))
        if cert is None:
            raise DemoError("certificate not yet in the proven state")
        x = to_x509(cert, self.chain_id, header.height)
        return verify_certificate(rpc, self.genesis, parsed_from_x509(x)), x

    # ------------------------------------------------------------------ X.509 for standard clients
    def proven(self, method: str, params: dict[str, Any] | None, key: bytes, node: int) -> Any:
        """An answer about a threshold-signed object whose record's Merkle proof
        checks against the header the node returns; None while not signed."""
        from dpkid.client.lightclient import decode_header
        from dpkid.core.state.proofs import decode_proof, verify_record

        try:
            res = self.rpc(method, params, node)
        except RpcClientError as exc:
            if exc.code == -32005:
                return None
            raise
        header = decode_header(res["header_bytes"])
        rec = verify_record(header.app_hash, decode_proof(bytes.fromhex(res["proof"])), key)
        if rec is None:
            return None
        res["_record"] = rec
        return res

    def root_pem(self) -> bytes:
        from dpkid.core.state import tss as rules

        if self._root is None:
            res = self.wait(
                lambda: self.proven("root_get", None, rules.K_TSS_ROOT, 1),
                "the validators' root certificate",
            )
            if res["_record"].der != bytes.fromhex(res["root_der"]):
                raise DemoError("root_get answered a root that is not the proven record")
            root: bytes = res["root_pem"].encode()
            (self.dir / "root.pem").write_bytes(root)
            self._root = root
        return self._root

    def leaf(self, cert_id: bytes, name: str, min_version: int = 0) -> dict[str, Any]:
        """Wait until the validators signed version >= min_version; write NAME.pem."""
        from dpkid.core.state import tss as rules

        def signed() -> Any:
            res = self.proven("cert_x509", {"cert_id": cert_id.hex()}, rules.key_x509(cert_id), 2)
            return res if res is not None and res["version"] >= min_version else None

        res: dict[str, Any] = self.wait(signed, f"the threshold signature on {name}")
        if res["_record"].der != bytes.fromhex(res["leaf_der"]):
            raise DemoError(f"cert_x509 answered a {name} that is not the proven record")
        (self.dir / f"{name}.pem").write_text(res["chain_pem"])
        return res

    def crl_listing(self, serials: list[int]) -> bytes:
        from cryptography import x509 as cx509

        from dpkid.core.state import tss as rules

        def listed() -> Any:
            res = self.proven("crl_get", None, rules.K_TSS_CRL, 3)
            if res is None:
                return None
            crl = cx509.load_der_x509_crl(bytes.fromhex(res["crl_der"]))
            if all(crl.get_revoked_certificate_by_serial_number(s) for s in serials):
                return res
            return None

        res = self.wait(listed, f"a signed CRL listing serial(s) {serials}")
        pem: bytes = res["crl_pem"].encode()
        (self.dir / "crl.pem").write_bytes(pem)
        return pem

    def standard_clients(self, certs: list[tuple[str, bytes, str, Any]]) -> None:
        """Every certificate, as ordinary TLS software sees it through root.pem."""
        from cryptography.hazmat.primitives import serialization

        from dpkid.dev.tlscheck import openssl_verify, tls_handshake

        root = self.root_pem()
        details, all_ok = [], True
        for typ, cert_id, domain, key in certs:
            res = self.leaf(cert_id, typ.lower())
            self.x509s[typ] = res
            leaf = res["leaf_pem"].encode()
            ov = openssl_verify(root, leaf)
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            hs = tls_handshake(res["chain_pem"].encode(), key_pem, root, domain)
            wrong = tls_handshake(res["chain_pem"].encode(), key_pem, root, "other." + domain)
            ok = ov.ok and "OK" in ov.detail and hs.ok and not wrong.ok
            all_ok = all_ok and ok
            details.append(
                f"{typ}: openssl verify {'OK' if ov.ok else 'FAILED (' + ov.detail + ')'}, "
                f"Python ssl {hs.detail if hs.ok else 'FAILED: ' + hs.detail}"
            )
        self.record(
            "x509_verified_by_standard_clients",
            all_ok,
            "root.pem (key held only in validator shares) -> " + "; ".join(details),
            root=str(self.dir / "root.pem"),
        )

    def issue_endorsed(
        self, key: SigningKey, typ: str, domain: str, spki: bytes, via: str, org: Endorsed
    ) -> tuple[bytes, Any]:
        """Apply for an OV or EV certificate, have ``org.endorsers`` vouch for the
        organization, wait for issuance, verify it through the light client and
        record the step. Returns the certificate id and the holder's X.509."""
        app, info = self.apply(key, typ, domain, spki, org.identity, via)
        for e in org.endorsers:
            self.submit(e, Endorse(app, True, org.note))
        a = self.wait_issued(app)
        cert_id = bytes.fromhex(a["cert_id"])
        v, x509 = self.verify(cert_id)
        self.record(
            f"{typ.lower()}_issued_and_verified",
            v.valid and v.cert.cert_type == typ,
            f"certificate {cert_id.hex()[:16]} for {org.identity.name}: "
            f"{via} + {len(org.endorsers)} endorsements; {v.status}",
            cert_id=cert_id.hex(),
            issued_height=a["closed_height"],
            fee=info["escrow"],
        )
        return cert_id, x509

    def run_story(self) -> None:
        acc_dv, acc_ov, acc_ev = self.accounts[0], self.accounts[1], self.accounts[2]
        results: dict[str, Any] = {}
        # DV via http-01
        dv_key = ed25519.Ed25519PrivateKey.generate()
        app, info = self.apply(
            acc_dv, "DV", "shop.example", spki_der_of(dv_key.public_key()), None, "http-01"
        )
        self.record(
            "dv_applied",
            True,
            f"application {app.hex()[:16]} for shop.example, escrow {info['escrow']}",
        )
        a = self.wait_issued(app)
        dv_cert = bytes.fromhex(a["cert_id"])
        v, _ = self.verify(dv_cert)
        ok_attest = [x for x in a["attestations"] if x["ok"]]
        self.record(
            "dv_issued_and_verified",
            v.valid and v.cert.cert_type == "DV",
            f"certificate {dv_cert.hex()[:16]}: {len(ok_attest)} validators proved control "
            "(http-01); "
            f"light client says {v.status}",
            cert_id=dv_cert.hex(),
            issued_height=a["closed_height"],
            fee=info["escrow"],
        )
        results["dv"] = dv_cert
        # OV via dns-01, two endorsers
        org_ov = OrgIdentity("Example Shop GmbH", "DE", "Berlin", "Berlin", "HRB 12345", "")
        ov_key = ec.generate_private_key(ec.SECP256R1())
        ov = Endorsed(org_ov, self.endorsers[:2], "trade register extract checked")
        ov_cert, _ = self.issue_endorsed(
            acc_ov, "OV", "shop-gmbh.example", spki_der_of(ov_key), "dns-01", ov
        )
        # EV via http-01, three endorsers
        org_ev = OrgIdentity(
            "Example Bank AG", "CH", "Zurich", "Zurich", "CHE-123.456.789", "CH-ZH"
        )
        ev_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ev = Endorsed(org_ev, self.endorsers, "identity and jurisdiction verified")
        ev_cert, ev_x509 = self.issue_endorsed(
            acc_ev, "EV", "bank.example", spki_der_of(ev_key), "http-01", ev
        )
        # The same three certificates, threshold-signed by the validators, for
        # openssl and Python's ssl module with nothing but root.pem.
        self.standard_clients(
            [
                ("DV", dv_cert, "shop.example", dv_key),
                ("OV", ov_cert, "shop-gmbh.example", ov_key),
                ("EV", ev_cert, "bank.example", ev_key),
            ]
        )
        # Revocation of the DV certificate by its owner
        raw = self.submit(acc_dv, Revoke(dv_cert, 1))
        self.wait_tx(raw)
        v, _ = self.verify(dv_cert)
        self.record(
            "dv_revoked_verification_fails",
            (not v.valid) and v.status == "revoked",
            f"owner revoked with keyCompromise; light client now says {v.status}",
        )
        from cryptography import x509 as cx509

        from dpkid.dev.tlscheck import openssl_verify

        dv_leaf = self.x509s["DV"]["leaf_pem"].encode()
        dv_serial = cx509.load_pem_x509_certificate(dv_leaf).serial_number
        crl = self.crl_listing([dv_serial])
        revoked = openssl_verify(self.root_pem(), dv_leaf, crl)
        still = openssl_verify(self.root_pem(), self.x509s["OV"]["leaf_pem"].encode(), crl)
        self.record(
            "dv_revoked_on_signed_crl",
            (not revoked.ok) and "certificate revoked" in revoked.detail and still.ok,
            f"the validators signed a CRL listing serial {dv_serial:x}: openssl verify -crl_check"
            f" says '{revoked.detail}' for the DV leaf, '{still.detail}' for the OV leaf",
        )
        # An endorser withdraws: EV degrades to DV
        raw = self.submit(self.endorsers[0], EndorseWithdraw(ev_cert, "registration under review"))
        self.wait_tx(raw)
        self.verify(ev_cert)
        # The X.509 the bank holds still says EV; the ledger now says DV.
        v = verify_certificate(
            lambda m, p: self.rpc(m, p, node=2), self.genesis, parsed_from_x509(ev_x509)
        )
        self.record(
            "ev_degraded_to_dv",
            v.valid and v.cert is not None and v.cert.cert_type == "DV",
            f"endorsement withdrawn: the certificate is now {v.cert.cert_type if v.cert else '?'}, "
            f"still {v.status} for its domain ({v.reason})",
        )
        # The validators sign a DV version, and the CRL retires the EV one.
        old_ev = self.x509s["EV"]["leaf_pem"].encode()
        new = self.leaf(ev_cert, "ev-as-dv", min_version=1)
        new_leaf = new["leaf_pem"].encode()
        parsed = cx509.load_pem_x509_certificate(new_leaf)
        pols = parsed.extensions.get_extension_for_class(cx509.CertificatePolicies).value
        dv_policy = any(p.policy_identifier.dotted_string == "2.23.140.1.2.1" for p in pols)
        crl = self.crl_listing([cx509.load_pem_x509_certificate(old_ev).serial_number])
        new_ok = openssl_verify(self.root_pem(), new_leaf, crl)
        old_gone = openssl_verify(self.root_pem(), old_ev, crl)
        self.record(
            "ev_resigned_as_dv",
            dv_policy and new_ok.ok and not old_gone.ok and "revoked" in old_gone.detail,
            f"version {new['version']} signed with the DV policy: '{new_ok.detail}'; the EV"
            f" version on the CRL: '{old_gone.detail}'",
        )
        # A bogus application: nobody publishes the challenge -> validators attest failure.
        bogus_key = ed25519.Ed25519PrivateKey.generate()
        fee = self.genesis.policy.fee_dv
        raw = self.submit(
            acc_ov, CertApply("DV", ["bank.example"], spki_der_of(bogus_key.public_key()), 30, fee)
        )
        self.wait_tx(raw)
        bogus = sha256(b"dpkid/app/v1\x00" + sha256(raw))

        def closed() -> Any:
            a = self.rpc("application_get", {"app_id": bogus.hex()})["application"]
            return a if a["status"] != "pending" else None

        a = self.wait(closed, "the bogus application to be decided")
        self.record(
            "bogus_application_rejected",
            a["status"] == "rejected" and not a["cert_id"],
            f"someone else applied for bank.example without its challenge: {a['status']} "
            f"({a['close_reason']}), refunded minus the processing fee",
        )
        st = self.rpc("status")
        self.summary = {
            "chain_id": self.chain_id,
            "height": st["height"],
            "app_hash": st["app_hash"],
            "balances": {
                name: self.rpc("account_get", {"address": k.address.hex()})["balance"]
                for name, k in [
                    ("dv-applicant", acc_dv),
                    ("ov-applicant", acc_ov),
                    ("ev-applicant", acc_ev),
                    *[(f"endorser{i}", e) for i, e in enumerate(self.endorsers)],
                ]
            },
            "validators": {
                v["name"] or v["address"][:8]: self.rpc("account_get", {"address": v["address"]})[
                    "balance"
                ]
                for v in self.rpc("validators_list")["validators"]
            },
            "log": self.rpc("log_checkpoint"),
        }


def print_table(steps: list[Step], summary: dict[str, Any]) -> None:
    print()
    print(f"{'step':<32} {'height':>6}  {'result':<6} detail")
    print("-" * 110)
    for s in steps:
        print(f"{s.name:<32} {s.height:>6}  {'ok' if s.ok else 'FAIL':<6} {s.detail}")
    print("-" * 110)
    if summary:
        print(
            f"chain {summary['chain_id']} at height {summary['height']}, "
            f"app hash {summary['app_hash'][:32]}..."
        )
        log = summary["log"]
        print(f"certificate log: {log['log_size']} entries, root {log['log_root'][:32]}...")
        print("balances (tokens): " + ", ".join(f"{k} {v}" for k, v in summary["balances"].items()))
        print(
            "validator earnings are in their balances: "
            + ", ".join(f"{k} {v}" for k, v in summary["validators"].items())
        )


def run_demo(keep: bool, as_json: bool, workdir: str | None) -> int:
    def progress(msg: str) -> None:
        # Progress of long work goes to stderr, and --json keeps it quiet: stdout
        # holds only the result (the table, or the one JSON object).
        if not as_json:
            print(msg, file=sys.stderr, flush=True)

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dpkid-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    demo = Demo(base, progress)
    error = ""
    demo.summary = {}
    t0 = time.monotonic()
    try:
        progress(f"dpkid demo in {base}")
        demo.setup()
        demo.run_story()
    except (DemoError, VerifyError, RpcClientError, OSError, subprocess.SubprocessError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        progress(f"demo failed: {error}")
    finally:
        if keep and not error:
            progress("the nodes keep running (the challenge servers stop with this process):")
            for i, h in enumerate(demo.homes):
                progress(f"  node{i}: dpkid status --home {h}   (pid {demo.procs[i].pid})")
            progress(f"  stop them with: kill {' '.join(str(p.pid) for p in demo.procs)}")
            if demo.dns is not None:
                demo.dns.stop()
            if demo.http is not None:
                demo.http.stop()
        else:
            demo.stop()
    ok = not error and bool(demo.steps) and all(s.ok for s in demo.steps) and len(demo.steps) >= 7
    if as_json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "error": error,
                    "workdir": str(base),
                    "wall_s": round(time.monotonic() - t0, 1),
                    "steps": [
                        {
                            "name": s.name,
                            "ok": s.ok,
                            "height": s.height,
                            "detail": s.detail,
                            **s.data,
                        }
                        for s in demo.steps
                    ],
                    "summary": {k: v for k, v in demo.summary.items() if k != "log"}
                    | (
                        {
                            "log_size": demo.summary["log"]["log_size"],
                            "log_root": demo.summary["log"]["log_root"],
                        }
                        if demo.summary
                        else {}
                    ),
                },
                sort_keys=True,
            )
        )
    else:
        print_table(demo.steps, demo.summary)
        print("\nok" if ok else f"\nFAILED{': ' + error if error else ''}")
    return 0 if ok else 1
