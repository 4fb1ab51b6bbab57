"""Security basics a node operator relies on (protocol/SECURITY.md):

* every secret file `dpkid init` and `dpkid testnet` write, and the ones the
  node writes while it runs, is mode 0600 whatever the umask;
* no RPC method ever answers with a private key (node, account or endorser
  seed) or the RPC token, in hex or base64;
* the TCP RPC cannot be configured off loopback, and the test-only setting
  that lets domain validation reach private addresses is refused outside a
  testnet chain.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dpkid.core import codec
from dpkid.core.crypto import sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.state.authz import AUTHZ_TAG
from dpkid.core.state.machine import APP_TAG, cert_id_for
from dpkid.core.types import AuthzRequest, CertApply, Policy, Transfer, sign_tx
from dpkid.daemon.config import ConfigError, read_key, read_settings, settings_from_dict
from dpkid.daemon.daemon import NodeDaemon
from dpkid.daemon.rpc_methods import METHODS
from dpkid.daemon.signstate import LOCK_FILE, SIGN_STATE_FILE, TSS_SECRETS_FILE
from tests.test_rpc_conformance import Conn

DPKID = [sys.executable, "-m", "dpkid"]
FEE = Policy().min_tx_fee


def _run(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        os.umask(umask)

    return subprocess.run(
        [*DPKID, *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=set_umask,
    )


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def _testnet(out: Path, *extra: str, umask: int = 0o022) -> dict[str, Any]:
    r = _run(
        "testnet",
        *("--validators", "1", "--endorsers", "2", "--accounts", "2"),
        *("--out", str(out), "--json", *extra),
        umask=umask,
    )
    assert r.returncode == 0, r.stderr
    info: dict[str, Any] = json.loads(r.stdout)
    return info


# ------------------------------------------------------------------ file modes


def test_init_writes_the_node_key_and_rpc_token_0600_even_with_umask_0(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = _run("init", "--home", str(home), "--json", umask=0)
    assert r.returncode == 0, r.stderr
    for name in ("node_key.json", "rpc_token"):
        assert _mode(home / name) == 0o600, name
    assert "(mode 0600)" in _run("init", "--home", str(tmp_path / "h2")).stdout


def test_testnet_writes_every_key_file_and_token_0600_even_with_umask_0(tmp_path: Path) -> None:
    info = _testnet(tmp_path / "tn", umask=0)
    secrets = [Path(p) for p in (*info["account_keys"], *info["endorser_keys"])]
    for node in info["nodes"]:
        secrets += [Path(node) / "node_key.json", Path(node) / "rpc_token"]
    assert len(secrets) == 2 + 2 + 2
    for p in secrets:
        assert _mode(p) == 0o600, p
    # And each really is a secret: a key file holds its seed.
    assert read_key(secrets[0]).seed.hex() in secrets[0].read_text()


def test_the_node_writes_its_sign_state_and_lock_0600(tmp_path: Path) -> None:
    """The double-sign guard files and the threshold key share, written while
    the node signs (here with umask 0)."""
    info = _testnet(tmp_path / "tn", "--timeout-commit-ms", "50")
    home = Path(info["nodes"][0])
    old = os.umask(0)
    try:

        async def main() -> None:
            d = NodeDaemon(home)
            try:
                async with trio.open_nursery() as n:
                    await n.start(d.run)
                    with trio.fail_after(60):
                        # A lock needs a polka; a few heights make one certain.
                        while (
                            d.core.state.height < 3
                            or not (home / LOCK_FILE).exists()
                            or not (home / TSS_SECRETS_FILE).exists()
                        ):
                            await trio.sleep(0.05)
                    n.cancel_scope.cancel()
            finally:
                await d.aclose()

        trio.run(main)
    finally:
        os.umask(old)
    assert _mode(home / SIGN_STATE_FILE) == 0o600
    assert _mode(home / LOCK_FILE) == 0o600
    assert _mode(home / TSS_SECRETS_FILE) == 0o600


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("addr", ["0.0.0.0:8545", "10.0.0.5:8545", "[::]:8545", "127.0.0.2:1"])
def test_the_tcp_rpc_cannot_be_configured_off_loopback(addr: str) -> None:
    with pytest.raises(ConfigError, match=r"rpc_tcp.*must be 127\.0\.0\.1:PORT or \[::1\]:PORT"):
        settings_from_dict({"rpc_tcp": addr}, "config.toml")
    assert settings_from_dict({"rpc_tcp": "127.0.0.1:8545"}, "c").rpc_tcp == "127.0.0.1:8545"
    assert settings_from_dict({"rpc_tcp": "[::1]:8545"}, "c").rpc_tcp == "[::1]:8545"


def test_testnet_allows_private_dv_addresses_only_on_a_testnet_chain(tmp_path: Path) -> None:
    test = _testnet(tmp_path / "a")
    assert read_settings(Path(test["nodes"][0]) / "config.toml").dv_allow_private_addresses
    real = _testnet(tmp_path / "b", "--chain-id", "dpkid-main-1")
    assert not read_settings(Path(real["nodes"][0]) / "config.toml").dv_allow_private_addresses
    with pytest.raises(ConfigError, match="expected true or false"):
        settings_from_dict({"dv_allow_private_addresses": "yes"}, "c")


def test_start_refuses_private_dv_addresses_on_a_chain_that_is_not_a_testnet(
    tmp_path: Path,
) -> None:
    info = _testnet(tmp_path / "tn", "--chain-id", "dpkid-main-1")
    home = Path(info["nodes"][0])
    cfg = home / "config.toml"
    text = cfg.read_text()
    assert "dv_allow_private_addresses = false" in text
    cfg.write_text(
        text.replace("dv_allow_private_addresses = false", "dv_allow_private_addresses = true")
    )
    r = subprocess.run(
        [*DPKID, "start", "--home", str(home)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
    assert "dv_allow_private_addresses = true is only accepted on a testnet" in r.stderr
    assert "dpkid-main-1" in r.stderr
    assert not (home / "dpkid.sock").exists()  # it stopped before serving anything


# ------------------------------------------------------------------ nothing secret over RPC


def _encodings(secret: bytes) -> list[str]:
    """How `secret` could appear in a JSON answer: hex in either case, and
    base64 (standard and URL-safe) at each of the three byte alignments it
    could have inside a longer encoded value (the fully determined middle)."""
    out = [secret.hex(), secret.hex().upper()]
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(bytes(pad) + secret + bytes(3)).decode()
            out.append(text[4:-8])
    return out


def _leaks(text: str, secrets: dict[str, bytes]) -> list[str]:
    low = text.lower()
    found = []
    for name, secret in secrets.items():
        for form in _encodings(secret):
            if form in text or (re.fullmatch(r"[0-9a-fA-F]+", form) and form.lower() in low):
                found.append(name)
                break
    return found


def test_the_leak_finder_finds_a_seed_in_any_encoding() -> None:
    """The check below would be vacuous if it could not see a key; it can."""
    seed = bytes(range(32))
    secrets = {"k": seed}
    for wrapped in (b"", b"x", b"xy"):
        blob = wrapped + seed + b"tail"
        for text in (
            blob.hex(),
            blob.hex().upper(),
            base64.b64encode(blob).decode(),
            base64.urlsafe_b64encode(blob).decode().rstrip("="),
        ):
            assert _leaks(json.dumps({"v": text}), secrets) == ["k"], text
    assert _leaks(json.dumps({"v": sha256(seed).hex()}), secrets) == []


def test_no_rpc_method_answers_with_a_private_key_or_the_token(tmp_path: Path) -> None:
    """Every method in METHODS, on a real node that has issued a certificate
    (so proofs, logs and receipts have content), plus every subscription's
    notifications: no answer holds a seed or the RPC token."""
    info = _testnet(tmp_path / "tn", "--timeout-commit-ms", "100")
    home = Path(info["nodes"][0])
    cfg = home / "config.toml"
    # The only validator attests every application: certificates issue without DNS.
    cfg.write_text(cfg.read_text().replace('dv_fault = ""', 'dv_fault = "approve_all"'))
    node_key = read_key(home / "node_key.json")
    accounts = [read_key(Path(p)) for p in info["account_keys"]]
    endorsers = [read_key(Path(p)) for p in info["endorser_keys"]]
    secrets = {"node seed": node_key.seed}
    secrets |= {f"account{i} seed": k.seed for i, k in enumerate(accounts)}
    secrets |= {f"endorser{i} seed": k.seed for i, k in enumerate(endorsers)}
    secrets["rpc token"] = (home / "rpc_token").read_text().strip().encode()
    answers: dict[str, list[str]] = {}
    chain_id = info["chain_id"]

    async def body(d: NodeDaemon) -> None:
        c = Conn(await trio.open_unix_socket(str(home / "dpkid.sock")))
        rid = [0]

        async def call(method: str, params: Any = None) -> Any:
            rid[0] += 1
            req = {"jsonrpc": "2.0", "id": rid[0], "method": method, "params": params or {}}
            await c.send_raw(json.dumps(req).encode() + b"\n")
            for _ in range(1000):  # notifications may come first; keep them too
                line = await c.line()
                answers.setdefault(method if line.get("id") == rid[0] else "notify", []).append(
                    json.dumps(line)
                )
                if line.get("id") == rid[0]:
                    assert "result" in line, (method, params, line)
                    return line["result"]
            raise AssertionError("no answer")

        subs = [await call("subscribe", {"topic": t}) for t in ("blocks", "certs", "applications")]
        a0, a1 = accounts
        transfer = codec.encode(sign_tx(a0, chain_id, 0, FEE, Transfer(a1.address, 5)))
        spki = spki_der_of(Ed25519PrivateKey.generate())
        apply = codec.encode(
            sign_tx(a0, chain_id, 1, FEE, CertApply("DV", ["leak.test"], spki, 30, Policy().fee_dv))
        )
        app_id = sha256(APP_TAG + sha256(apply))
        authz_req = codec.encode(
            sign_tx(a0, chain_id, 2, FEE, AuthzRequest("leak.test", "dpkid", "dns-01"))
        )
        authz_id = sha256(AUTHZ_TAG + sha256(authz_req))
        from dpkid.core.state.grants import GRANT_TAG
        from dpkid.core.types import GrantCreate

        grant_req = codec.encode(
            sign_tx(a0, chain_id, 3, FEE, GrantCreate(accounts[1].public_key, 100, 1, b"box"))
        )
        grant_id = sha256(GRANT_TAG + sha256(grant_req))
        cert_id = cert_id_for(app_id)
        tx_hashes = [
            (await call("tx_submit", {"tx": raw.hex()}))["hash"]
            for raw in (transfer, apply, authz_req, grant_req)
        ]
        with trio.fail_after(60):
            while d.core.ledger.certificate(cert_id) is None:
                await trio.sleep(0.05)
            h = d.core.ledger.height
            while d.core.ledger.height < h + 2:  # the proofs need the next header
                await trio.sleep(0.05)
        await call("status")
        await call("block_get")
        for hgt in range(1, d.core.ledger.height + 1):
            await call("block_get", {"height": hgt})
        await call("headers_get", {"from": 1, "count": 100})
        for th in tx_hashes:
            await call("tx_get", {"hash": th})
        for k in (node_key, *accounts, *endorsers):
            await call("account_get", {"address": k.address.hex()})
        await call("cert_get", {"cert_id": cert_id.hex()})
        await call("certs_by_domain", {"domain": "leak.test"})
        await call("application_get", {"app_id": app_id.hex()})
        await call("cert_proof", {"cert_id": cert_id.hex()})
        await call("cert_proof", {"domain": "leak.test"})
        for k in (node_key, *accounts):
            await call("cert_proof", {"address": k.address.hex()})
        await call("log_checkpoint")
        await call("log_proof", {"index": 0})
        await call("log_proof", {"old_size": 0, "new_size": 1})
        await call("endorsers_list")
        await call("validators_list")
        await call("validators_at", {"height": 1})
        await call("validators_at", {"height": d.core.ledger.height})
        # The threshold key's answers: the validator's key share never leaves.
        from dpkid.core.state import tss as rules

        with trio.fail_after(60):
            while not (
                (tc := d.core.ledger.get(rules.key_x509(cert_id))) is not None
                and tc.der
                and d.core.ledger.get(rules.K_TSS_CRL) is not None
            ):
                await trio.sleep(0.05)
            h = d.core.ledger.height
            while d.core.ledger.height < h + 2:
                await trio.sleep(0.05)
        await call("authz_get", {"authz_id": authz_id.hex()})
        await call("grant_get", {"grant_id": grant_id.hex()})
        await call("tss_status")
        await call("root_get")
        await call("crl_get")
        await call("cert_x509", {"cert_id": cert_id.hex()})
        for s in subs:
            await call("unsubscribe", {"subscription": s["subscription"]})

    async def main() -> None:
        d = NodeDaemon(home)
        try:
            async with trio.open_nursery() as n:
                await n.start(d.run)
                with trio.fail_after(120):
                    await body(d)
                n.cancel_scope.cancel()
        finally:
            await d.aclose()

    trio.run(main)
    assert set(METHODS) <= set(answers), f"not called: {set(METHODS) - set(answers)}"
    kinds = {json.loads(x)["params"]["topic"] for x in answers["notify"] if "params" in x}
    assert kinds == {"blocks", "certs", "applications"}, kinds
    for method, texts in answers.items():
        for text in texts:
            assert _leaks(text, secrets) == [], (method, text[:200])
    # The answers do carry the public halves: the check looked at real content.
    everything = "".join(t for ts in answers.values() for t in ts)
    assert node_key.public_key.hex() in everything and accounts[0].address.hex() in everything
