"""Client verification trusts no node: real node, real proofs, lying-node cases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from dpkid.client.lightclient import VerifyError, judge_certificate
from dpkid.client.rpc import call_sync
from dpkid.client.verify import ParsedCert, parsed_from_x509, verify_certificate
from dpkid.client.x509 import to_pem, to_x509
from dpkid.core import codec
from dpkid.core.crypto import sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.state.machine import cert_id_for, key_cert
from dpkid.core.state.proofs import make_proof
from dpkid.core.types import (
    Attestation,
    CertApply,
    DvAttest,
    Endorse,
    EndorseWithdraw,
    OrgIdentity,
    Revoke,
    TxBody,
    sign_tx,
)
from dpkid.daemon.config import read_genesis, read_key
from dpkid.daemon.daemon import NodeDaemon
from dpkid.dev.devchain import DevChain

pytestmark = pytest.mark.slow


def _app_id(raw: bytes) -> bytes:
    return sha256(b"dpkid/app/v1\x00" + sha256(raw))


class World:
    def __init__(self, tmp: Path) -> None:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dpkid",
                "testnet",
                "--validators",
                "1",
                "--endorsers",
                "3",
                "--out",
                str(tmp / "tn"),
                "--json",
                "--timeout-commit-ms",
                "100",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.info = json.loads(out.stdout)
        self.home = Path(self.info["nodes"][0])
        self.genesis = read_genesis(self.home / "genesis.json")
        self.validator = read_key(self.home / "node_key.json")
        self.account = read_key(Path(self.info["account_keys"][0]))
        self.endorsers = [read_key(Path(p)) for p in self.info["endorser_keys"]]
        self.nonces: dict[bytes, int] = {}

    def rpc(self, method: str, params: dict[str, Any]) -> Any:
        return call_sync(self.home, method, params)

    async def submit(self, d: NodeDaemon, key: Any, body: TxBody) -> bytes:
        # The node's own account also sends its threshold-signing txs: take
        # the next nonce from the node (committed plus pending), as a wallet would.
        n = d.core.next_nonce(key.address)
        raw = codec.encode(sign_tx(key, self.genesis.chain_id, n, 10, body))
        v = await d.submit_tx(raw)
        code, why = v.verdict, v.why
        assert code == 0, why
        return raw


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    with trio.fail_after(timeout_s):
        while not cond():
            await trio.sleep(0.05)


def run(tmp: Path, body: Callable[[World, NodeDaemon], Awaitable[None]]) -> None:
    w = World(tmp)

    async def main() -> None:
        d = NodeDaemon(w.home)
        try:
            async with trio.open_nursery() as n:
                await n.start(d.run)
                with trio.fail_after(180):
                    await body(w, d)
                n.cancel_scope.cancel()
        finally:
            await d.aclose()

    trio.run(main)


async def _issue(w: World, d: NodeDaemon, typ: str, domain: str, spki: bytes) -> bytes:
    org = (
        OrgIdentity("Example Bank AG", "CH", registration_id="CHE-1", jurisdiction="CH-ZH")
        if typ != "DV"
        else None
    )
    fee = {"DV": 1_000, "OV": 5_000, "EV": 20_000}[typ]
    raw = await w.submit(d, w.account, CertApply(typ, [domain], spki, 30, fee, org))  # type: ignore[arg-type]
    app = _app_id(raw)
    await _until(lambda: d.core.state.application(app) is not None, "application")
    await w.submit(d, w.validator, DvAttest([Attestation(app, True, "dns-01")]))
    if typ != "DV":
        for e in w.endorsers[: 3 if typ == "EV" else 2]:
            await w.submit(d, e, Endorse(app, True, "checked"))
    cid = cert_id_for(app)
    await _until(lambda: d.core.state.certificate(cid) is not None, "issuance")
    h = d.core.state.height
    await _until(lambda: d.core.state.height >= h + 1, "one more block (proof at the next header)")
    return cid


def _x509_for(w: World, d: NodeDaemon, cid: bytes) -> Any:
    cert = d.core.state.certificate(cid)
    assert cert is not None
    return to_x509(cert, w.genesis.chain_id, d.core.state.height)


async def _verify(
    w: World, rpc: Callable[[str, dict[str, Any]], Any], parsed: ParsedCert, **kw: Any
) -> Any:
    return await trio.to_thread.run_sync(lambda: verify_certificate(rpc, w.genesis, parsed, **kw))


def test_valid_revoked_degraded_and_cli(tmp_path: Path) -> None:
    async def body(w: World, d: NodeDaemon) -> None:
        dv_key = ed25519.Ed25519PrivateKey.generate()
        ev_key = ec.generate_private_key(ec.SECP256R1())
        dv = await _issue(w, d, "DV", "shop.example", spki_der_of(dv_key.public_key()))
        ev = await _issue(w, d, "EV", "bank.example", spki_der_of(ev_key.public_key()))
        dv_x, ev_x = _x509_for(w, d, dv), _x509_for(w, d, ev)
        v = await _verify(w, w.rpc, parsed_from_x509(dv_x))
        assert v.valid and v.status == "valid" and v.cert.cert_type == "DV"
        v = await _verify(w, w.rpc, parsed_from_x509(ev_x))
        assert v.valid and v.cert.cert_type == "EV"
        # LIGHT.md: cold from the genesis, then warm from the trusted store.
        store = tmp_path / "light.json"
        cold: dict[str, Any] = {}
        v = await _verify(w, w.rpc, parsed_from_x509(dv_x), store=store, stats=cold)
        assert v.valid and not cold["warm"] and cold["from"] == 0 and cold["light_blocks"] >= 1
        warm: dict[str, Any] = {}
        v = await _verify(w, w.rpc, parsed_from_x509(dv_x), store=store, stats=warm)
        assert v.valid and warm["warm"] and warm["from"] > 0
        assert warm["light_blocks"] <= 1
        # An offline bundle (LIGHT.md §7): written from the node, checked with none.
        bundle = tmp_path / "dv.bundle.json"

        def dpkid(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "dpkid", *args, "--json"],
                capture_output=True,
                text=True,
                timeout=60,
            )

        exp = await trio.to_thread.run_sync(
            lambda: dpkid(
                "cert", "export", dv.hex(), "--bundle", str(bundle), "--home", str(w.home)
            )
        )
        assert exp.returncode == 0, exp.stdout + exp.stderr
        assert json.loads(exp.stdout)["bytes"] <= 16 * 1024
        genesis_file = str(w.home / "genesis.json")
        off = await trio.to_thread.run_sync(
            lambda: dpkid("verify", "--bundle", str(bundle), "--genesis", genesis_file)
        )
        assert off.returncode == 0 and json.loads(off.stdout)["valid"], off.stdout + off.stderr
        doc = json.loads(bundle.read_text())
        doc["proof"] = doc["proof"][:-2] + ("00" if doc["proof"][-2:] != "00" else "01")
        bundle.write_text(json.dumps(doc))
        bad = await trio.to_thread.run_sync(
            lambda: dpkid("verify", "--bundle", str(bundle), "--genesis", genesis_file)
        )
        assert bad.returncode != 0 and not json.loads(bad.stdout).get("valid"), bad.stdout
        # `dpkid cert export` writes it (from a checked proof), and openssl parses it.
        pem_path = tmp_path / "ev.pem"
        exp = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dpkid",
                    "cert",
                    "export",
                    ev.hex(),
                    "--home",
                    str(w.home),
                    "--out",
                    str(pem_path),
                    "--wait",
                    "60",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert exp.returncode == 0, exp.stderr
        assert pem_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        # The Python API does the same checks as the CLI.
        from dpkid.client.rpc import verify as client_verify

        api = await trio.to_thread.run_sync(
            lambda: client_verify(pem_path, w.home / "genesis.json", home=w.home)
        )
        assert api.valid and api.cert.cert_type == "EV"
        if shutil.which("openssl"):
            out = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    ["openssl", "x509", "-in", str(pem_path), "-noout", "-text"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            )
            assert (
                out.returncode == 0
                and "bank.example" in out.stdout
                and "2.23.140.1.1" in out.stdout
            )
        # The CLI agrees, exit 0 for valid.
        cli = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dpkid",
                    "verify",
                    str(pem_path),
                    "--home",
                    str(w.home),
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["status"] == "valid"
        # Revocation: the verdict flips, exit 1.
        await w.submit(d, w.account, Revoke(dv, 1))
        await _until(lambda: d.core.state.certificate(dv).status == "revoked", "revocation")  # type: ignore[union-attr]
        h = d.core.state.height
        await _until(lambda: d.core.state.height >= h + 1, "next header")
        v = await _verify(w, w.rpc, parsed_from_x509(dv_x))
        assert not v.valid and v.status == "revoked"
        dv_pem = tmp_path / "dv.pem"
        dv_pem.write_bytes(to_pem(dv_x))
        cli = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "dpkid", "verify", str(dv_pem), "--home", str(w.home)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert cli.returncode == 1 and "revoked" in cli.stdout
        # Degradation: an endorsement withdrawn turns EV into DV, still valid as DV.
        await w.submit(d, w.endorsers[0], EndorseWithdraw(ev, "lapsed"))
        await _until(lambda: d.core.state.certificate(ev).cert_type == "DV", "degradation")  # type: ignore[union-attr]
        h = d.core.state.height
        await _until(lambda: d.core.state.height >= h + 1, "next header")
        v = await _verify(w, w.rpc, parsed_from_x509(ev_x))
        assert v.valid and v.cert.cert_type == "DV" and "degraded" in v.reason

    run(tmp_path, body)


def test_lying_nodes_are_detected(tmp_path: Path) -> None:
    async def body(w: World, d: NodeDaemon) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        cid = await _issue(w, d, "DV", "lies.example", spki_der_of(key.public_key()))
        parsed = parsed_from_x509(_x509_for(w, d, cid))

        def forged_proof(method: str, params: dict[str, Any]) -> Any:
            res = w.rpc(method, params)
            if method == "cert_proof":
                p = bytearray(bytes.fromhex(res["proof"]))
                p[-5] ^= 0x01  # one flipped bit inside the Merkle path
                res["proof"] = bytes(p).hex()
            return res

        with pytest.raises(VerifyError):
            await _verify(w, forged_proof, parsed)

        def too_few_signers(method: str, params: dict[str, Any]) -> Any:
            res = w.rpc(method, params)
            if method == "headers_get":
                from dpkid.core.consensus.messages import Commit

                for item in res["headers"]:
                    c = codec.decode(bytes.fromhex(item["commit_bytes"]), Commit)
                    item["commit_bytes"] = codec.encode(
                        Commit(c.height, c.round, c.block_hash, [])
                    ).hex()
            return res

        with pytest.raises(VerifyError, match="2/3"):
            await _verify(w, too_few_signers, parsed)

        # Stale: a node that stops at an old header; judged by the local clock.
        with pytest.raises(VerifyError, match="stale"):
            await _verify(w, w.rpc, parsed, now_ms=d.core.state.time_ms + 3_600_000)

        def wrong_chain(method: str, params: dict[str, Any]) -> Any:
            res = w.rpc(method, params)
            if method == "cert_proof":
                other = w.rpc("block_get", {"height": 1})
                res["header_bytes"] = other["header_bytes"]
            return res

        with pytest.raises(VerifyError):
            await _verify(w, wrong_chain, parsed)

    run(tmp_path, body)


def test_expiry_is_judged_at_header_time() -> None:
    c = DevChain.create()
    key = ed25519.Ed25519PrivateKey.generate()
    raw = c.tx(
        c.keys.accounts[0],
        CertApply("DV", ["old.example"], spki_der_of(key.public_key()), 1, 1_000),
    )
    c.block()
    app = _app_id(raw)
    for val in c.keys.validators[:3]:
        c.tx(val, DvAttest([Attestation(app, True, "dns-01")]))
    c.block()
    cid = cert_id_for(app)
    proof = make_proof(c.state, key_cert(cid))
    from dpkid.core.types import Header

    now = Header(
        c.chain_id,
        c.state.height + 1,
        c.state.time_ms + 1_000,
        c.keys.validators[0].address,
        app_hash=c.state.app_hash,
    )
    later = Header(
        c.chain_id,
        c.state.height + 1,
        c.state.time_ms + 2 * 86_400_000,
        c.keys.validators[0].address,
        app_hash=c.state.app_hash,
    )
    assert judge_certificate(now, proof, cid, ["old.example"]).status == "valid"
    v = judge_certificate(later, proof, cid, ["old.example"])
    assert not v.valid and v.status == "expired"
    v = judge_certificate(now, proof, cid, ["other.example"])
    assert not v.valid and v.status == "mismatch"
