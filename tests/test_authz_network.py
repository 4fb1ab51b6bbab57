"""Domain authorizations checked by real validator processes (SPEC §7.9):
the ACME format over http-01 and dpkid's over dns-01 become valid and issue a
certificate with no further check; a name nobody serves fails within a few
blocks with every validator's ACME problem type and reason on the ledger,
shown by `dpkid authz status`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dpkid.core.keys import spki_der_of
from dpkid.dev.dns_server import DevDnsServer, Zone
from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap
from tests.netutil import LocalNet, wait_for

pytestmark = pytest.mark.slow

DPKID = [sys.executable, "-m", "dpkid"]
THUMB = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"  # RFC 7638 §3.1's example


def _dpkid(*args: str) -> dict[str, Any]:
    out = subprocess.run([*DPKID, *args, "--json"], capture_output=True, text=True, timeout=120)
    doc: dict[str, Any] = json.loads(out.stdout)
    doc["_rc"] = out.returncode
    return doc


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[LocalNet, Zone, ChallengeMap]]:
    zone, web = Zone(), ChallengeMap()
    with DevDnsServer(zone) as dns_srv, ChallengeHttpServer(web) as http_srv:
        n = LocalNet(
            tmp_path / "tn",
            validators=4,
            extra_args=["--dns-resolver", dns_srv.address, "--http-port", str(http_srv.port)],
        )
        try:
            n.start_all()
            n.wait_height([0, 1, 2, 3], 2, timeout_s=60)
            yield n, zone, web
        finally:
            n.close()


def test_authorizations_are_checked_reused_and_fail_fast_with_reasons(
    net: tuple[LocalNet, Zone, ChallengeMap], tmp_path: Path
) -> None:
    n, zone, web = net
    home = str(n.home(0))
    acct = n.info["account_keys"][0]
    # 1. ACME format, http-01: published, then valid. The token must be bound
    # to the dpkid account (SPEC §7.9), as an ACME server in front would make it.
    from dpkid.core.challenges import acme_token_for
    from dpkid.daemon.config import read_key

    TOKEN = acme_token_for(read_key(Path(acct)).public_key, bytes(16))
    zone.set_a("shop.example", ["127.0.0.1"])
    web.set_path("shop.example", f"/.well-known/acme-challenge/{TOKEN}", f"{TOKEN}.{THUMB}")
    r = _dpkid(
        "authz", "request", "--domain", "shop.example", "--acme-token", TOKEN,
        "--acme-thumbprint", THUMB, "--account-key", acct, "--home", home, "--wait",
        "--timeout", "90",
    )  # fmt: skip
    assert r["_rc"] == 0 and r["status"] == "valid", r
    good = r["authz_id"]
    checks = r["authorization"]["checks"]
    assert sum(c["ok"] for c in checks) >= 3
    # 2. dpkid format, dns-01, wildcard: publish the TXT value the node gives.
    r = _dpkid(
        "authz", "request", "--domain", "*.shop.example", "--account-key", acct,
        "--home", home,
    )  # fmt: skip
    assert r["_rc"] == 0, r
    wild = r["authz_id"]
    dns = r["authorization"]["challenge"]["dns"][0]
    assert dns["name"] == "_dpki-challenge.shop.example"
    zone.add_txt(dns["name"], dns["value"])

    def valid(aid: str) -> bool:
        return bool(_dpkid("authz", "status", aid, "--home", home)["status"] == "valid")

    wait_for(lambda: valid(wild), 90, "the wildcard authorization to be valid")
    # 3. Both cited: the certificate is issued in the applying transaction.
    key = tmp_path / "shop.key"
    from cryptography.hazmat.primitives import serialization

    priv = Ed25519PrivateKey.generate()
    key.write_bytes(
        priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert spki_der_of(priv.public_key())
    r = _dpkid(
        "cert", "apply", "--type", "dv", "--domain", "shop.example", "--domain",
        "*.shop.example", "--cert-key", str(key), "--account-key", acct, "--authz", good,
        "--authz", wild, "--home", home, "--wait", "--timeout", "60",
    )  # fmt: skip
    assert r["_rc"] == 0 and r["status"] == "issued", r
    # 4. A name nobody serves: invalid within a few blocks, every reason on record.
    zone.set_a("gone.example", ["127.0.0.1"])
    h0 = n.height(0)
    r = _dpkid(
        "authz", "request", "--domain", "gone.example", "--account-key", acct, "--home", home,
        "--wait", "--timeout", "90",
    )  # fmt: skip
    assert r["_rc"] == 1 and r["status"] == "invalid", r
    failed = [c for c in r["authorization"]["checks"] if not c["ok"]]
    assert len(failed) >= 2  # more than a third of the power reported failure
    assert all(c["problem"] == "incorrectResponse" and c["detail"] for c in failed), failed
    decided = r["authorization"]["decided_height"]
    assert decided - h0 < 60  # failed fast, not at the 7-day TTL
    out = subprocess.run(
        [*DPKID, "authz", "status", r["authz_id"], "--home", home],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "invalid" in out.stdout and "FAILED [incorrectResponse]" in out.stdout, out.stdout
