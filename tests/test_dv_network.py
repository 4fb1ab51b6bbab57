"""Domain validation from many vantage points, on a real 4-validator testnet.

The validators are `dpkid start` processes. Their DV checks ask only a test
DNS server and connect only to a challenge web server, both run by this test
on 127.0.0.1 (nothing leaves the machine). Applications go in through the RPC
like any client's; the chain decides from the validators' `dv_attest`
transactions.

Two of the four validators lie, in opposite directions: node0 runs with
dv_fault=approve_all and node1 with dv_fault=reject_all. For any one
application only one of them disagrees with the truth (approve_all is right
about an honest application, reject_all about a bogus one), so every case
below is "one lying validator out of four" and the threshold must hold:
node0 alone cannot issue a bogus certificate, node1 alone cannot block an
honest one.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dpkid.client.rpc import RpcClientError
from dpkid.core import codec
from dpkid.core.challenges import dns_txt_value, key_authorization, token_for
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.state.machine import APP_TAG, cert_id_for
from dpkid.core.types import CertApply, Policy, sign_tx
from dpkid.daemon.config import read_key, read_settings, settings_to_toml
from dpkid.dev.dns_server import DevDnsServer, Zone
from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap
from tests.netutil import LocalNet, wait_for

pytestmark = pytest.mark.slow

# Long enough for every decided case even on a loaded machine, short enough to
# watch the unreachable one expire.
TTL_MS = 60_000
ESCROW = Policy().fee_dv
FEE = Policy().min_tx_fee
CHALLENGE = [sys.executable, "-m", "dpkid", "challenge"]


@dataclass
class World:
    net: LocalNet
    zone: Zone
    web: ChallengeMap


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    zone, web = Zone(), ChallengeMap()
    with DevDnsServer(zone) as dns_srv, ChallengeHttpServer(web) as http_srv:
        net = LocalNet(
            tmp_path / "tn",
            validators=4,
            extra_args=[
                "--dns-resolver",
                dns_srv.address,
                "--http-port",
                str(http_srv.port),
                "--application-ttl-ms",
                str(TTL_MS),
            ],
        )
        try:
            for i, fault in [(0, "approve_all"), (1, "reject_all")]:
                cfg = net.home(i) / "config.toml"
                s = read_settings(cfg)
                s.dv_fault = fault
                cfg.write_text(settings_to_toml(s))
            yield World(net, zone, web)
        finally:
            net.close()


@dataclass
class Applied:
    name: str
    key: SigningKey
    app_id: bytes
    raw_hex: str

    @property
    def token(self) -> str:
        return token_for(self.app_id, self.key.public_key)

    @property
    def key_auth(self) -> str:
        return key_authorization(self.token, self.key.public_key)

    @property
    def txt(self) -> str:
        return dns_txt_value(self.key_auth)


def _account(net: LocalNet, i: int) -> SigningKey:
    return read_key(Path(net.info["account_keys"][i]))


def _cert_apply(key: SigningKey, chain_id: str, nonce: int, domain: str, name: str) -> Applied:
    spki = spki_der_of(Ed25519PrivateKey.generate())
    raw = codec.encode(
        sign_tx(key, chain_id, nonce, FEE, CertApply("DV", [domain], spki, 30, ESCROW))
    )
    h = sha256(raw)
    return Applied(name, key, sha256(APP_TAG + h), raw.hex())


def _app(net: LocalNet, a: Applied, node: int = 2) -> dict[str, Any]:
    res: dict[str, Any] = net.rpc(node, "application_get", {"app_id": a.app_id.hex()})
    app: dict[str, Any] = res["application"]
    return app


def _attestations(net: LocalNet, a: Applied) -> dict[str, dict[str, Any]]:
    return {x["validator"]: x for x in _app(net, a)["attestations"]}


def test_dv_through_http01_and_dns01_with_lying_and_hostile_vantage_points(world: World) -> None:
    net, zone, web = world.net, world.zone, world.web
    chain_id = net.info["chain_id"]
    vals = [read_key(net.home(i) / "node_key.json").address.hex() for i in range(4)]
    honest = vals[2:]
    acct0, acct3 = _account(net, 0), _account(net, 3)

    # Every application is prepared (and its challenge published, or not)
    # before it is submitted, so the validators' first look decides.
    cases = [
        ("http", "web.dv.test"),
        ("dns_wildcard", "*.zone.dv.test"),
        ("wrong_token", "wrongtoken.dv.test"),
        ("missing_txt", "*.missing.dv.test"),
        ("garbage", "garbage.dv.test"),
        ("oversized", "oversized.dv.test"),
        ("slowloris", "slowloris.dv.test"),
    ]
    apps: dict[str, Applied] = {}
    for nonce, (name, domain) in enumerate(cases):
        apps[name] = _cert_apply(acct0, chain_id, nonce, domain, name)
    # The unreachable one is paid by its own account, to check the refund exactly.
    apps["unreachable"] = _cert_apply(acct3, chain_id, 0, "gone.dv.test", "unreachable")

    a = apps["http"]
    zone.set_a("web.dv.test", ["127.0.0.1"])
    web.set("web.dv.test", a.token, a.key_auth + "\n")
    a = apps["dns_wildcard"]
    zone.set_txt("_dpki-challenge.zone.dv.test", [a.txt])
    a = apps["wrong_token"]
    zone.set_a("wrongtoken.dv.test", ["127.0.0.1"])
    web.set("wrongtoken.dv.test", a.token, apps["http"].key_auth)  # someone else's answer
    zone.set_a("missing.dv.test", ["127.0.0.1"])  # the zone exists, the TXT record does not
    for b in ("garbage", "oversized", "slowloris"):
        zone.set_a(f"{b}.dv.test", ["127.0.0.1"])
        web.set_behaviour(f"{b}.dv.test", b)
    # gone.dv.test: not in the zone at all (NXDOMAIN).

    net.start_all()
    net.wait_height([0, 1, 2, 3], 2, timeout_s=90)
    balance3 = net.rpc(0, "account_get", {"address": acct3.address.hex()})["balance"]
    t0 = time.monotonic()
    for name, _ in cases:
        net.rpc(0, "tx_submit", {"tx": apps[name].raw_hex})
    net.rpc(1, "tx_submit", {"tx": apps["unreachable"].raw_hex})

    def decided() -> bool:
        return all(_app(net, apps[n])["status"] != "pending" for n, _ in cases)

    wait_for(decided, 150, "every reachable application to be decided", interval_s=0.5)
    decided_s = time.monotonic() - t0

    # Honest issuance (http-01 and dns-01 for a wildcard) despite node1's rejections.
    for name in ("http", "dns_wildcard"):
        app = _app(net, apps[name])
        assert app["status"] == "issued", (name, app)
        cert = net.rpc(3, "cert_get", {"cert_id": cert_id_for(apps[name].app_id).hex()})
        assert cert["certificate"]["status"] == "valid"
        att = _attestations(net, apps[name])
        assert vals[1] not in att or att[vals[1]]["ok"] is False  # the liar said no
        ok = [v for v in honest if v in att and att[v]["ok"]]
        assert ok, (name, att)
        want = "http-01" if name == "http" else "dns-01"
        assert all(att[v]["method"] == want for v in ok), att

    # Bogus applications are rejected despite node0's approvals; honest
    # validators attested a failure with a reason, and nothing was issued.
    reasons = {
        "wrong_token": "not the key authorization",
        "missing_txt": "no TXT record",
        "garbage": "malformed HTTP",
        "oversized": "too large",
        "slowloris": "too slow",
    }
    for name, why in reasons.items():
        app = _app(net, apps[name])
        assert app["status"] == "rejected", (name, app)
        assert app["cert_id"] == ""
        with pytest.raises(RpcClientError, match="no such certificate"):
            net.rpc(2, "cert_get", {"cert_id": cert_id_for(apps[name].app_id).hex()})
        att = _attestations(net, apps[name])
        fails = [att[v] for v in honest if v in att]
        assert fails and all(not f["ok"] and why in f["reason"] for f in fails), (name, att)
        assert vals[0] not in att or att[vals[0]]["ok"] is True  # the liar said yes

    _check_challenge_cli(net, apps["dns_wildcard"], apps["http"])

    # The unreachable domain: no honest validator attests, the application
    # stays pending (node0's lie and node1's "no" do not decide it) ...
    app = _app(net, apps["unreachable"])
    assert app["status"] == "pending", app
    att = _attestations(net, apps["unreachable"])
    assert not any(v in att for v in honest), att
    assert "dv_unreachable" in net.log_text(2) and "gone.dv.test" in net.log_text(2)

    # ... until it expires and the escrow comes back less the processing fee.
    def expired() -> dict[str, Any] | None:
        a = _app(net, apps["unreachable"])
        return a if a["status"] != "pending" else None

    app = wait_for(expired, TTL_MS / 1000 + 180, "the unreachable application to expire")
    assert app["status"] == "expired", app
    refund_fee = ESCROW * Policy().refund_fee_bps // 10_000
    balance_after = net.rpc(0, "account_get", {"address": acct3.address.hex()})["balance"]
    assert balance_after == balance3 - FEE - refund_fee
    print(f"decided in {decided_s:.1f} s; expired after {time.monotonic() - t0:.1f} s")


def _check_challenge_cli(net: LocalNet, dns_app: Applied, http_app: Applied) -> None:
    """The applicant's commands print and serve what the validators check."""
    home = str(net.home(2))
    out = subprocess.run(
        [*CHALLENGE, "dns-record", "--app", dns_app.app_id.hex(), "--home", home, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    recs = json.loads(out.stdout)["records"]
    assert recs == [{"name": "_dpki-challenge.zone.dv.test", "type": "TXT", "value": dns_app.txt}]
    p = subprocess.Popen(
        [*CHALLENGE, "serve", "--app", http_app.app_id.hex(), "--home", home, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        port = 0
        for _ in range(10):
            line = p.stdout.readline()
            if line.startswith("serving http-01 on"):
                port = int(line.split()[3].rsplit(":", 1)[1])
                break
        assert port, "challenge serve did not report its port"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET", f"/.well-known/dpki-challenge/{http_app.token}", headers={"Host": "web.dv.test"}
        )
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read().decode() == http_app.key_auth
        conn.close()
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        if p.stdout is not None:
            p.stdout.close()
