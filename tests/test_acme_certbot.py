"""Unmodified certbot against `dpkid acme serve` on a real 4-validator testnet:
http-01 with --standalone, dns-01 with --manual and an auth hook, renew
--force-renewal and revoke, each seen on the ledger by `dpkid cert status`,
and each leaf accepted by `dpkid verify` and by openssl against the root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from dpkid.client.x509 import parse_ledger_ref
from tests.acmeutil import AcmeNet, acme_net, dpkid_json

pytestmark = pytest.mark.slow

CERTBOT = str(Path(sys.executable).parent / "certbot")

HOOK = """\
import os, sys, time
from pathlib import Path
import dns.resolver
from dpkid.dev.dns_server import Zone

zone = Path(os.environ["DPKID_TEST_ZONE"])
name = "_acme-challenge." + os.environ["CERTBOT_DOMAIN"]
value = os.environ["CERTBOT_VALIDATION"]
data = Zone.read_file(zone)
data.setdefault(name, {}).setdefault("TXT", []).append(value)
Zone.write_file(zone, data)
host, port = os.environ["DPKID_TEST_DNS"].split(":")
r = dns.resolver.Resolver(configure=False)
r.nameservers, r.port = [host], int(port)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:  # return once the record is served
    try:
        if any(value in t.to_text() for t in r.resolve(name, "TXT")):
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
"""


def certbot(a: AcmeNet, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DPKID_TEST_ZONE": str(a.zone_path),
        "DPKID_TEST_DNS": a.dns.address,
    }
    return subprocess.run(
        [
            CERTBOT, *args, "--non-interactive", "--server", a.directory,
            "--config-dir", str(cfg / "config"), "--work-dir", str(cfg / "work"),
            "--logs-dir", str(cfg / "logs"),
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def ledger_id(pem: Path) -> str:
    ref = parse_ledger_ref(x509.load_pem_x509_certificate(pem.read_bytes()))
    assert ref is not None
    return bytes(ref["cert_id"]).hex()


def cert_status(a: AcmeNet, cert_id: str) -> dict[str, object]:
    r = dpkid_json("cert", "status", cert_id, "--home", a.home)
    return r


def check_leaf(a: AcmeNet, live: Path, names: list[str]) -> str:
    leaf = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    # The chain certbot saved is the validators' threshold root.
    root = dpkid_json("root", "export", "--out", str(live.parent / "root.pem"), "--home", a.home)
    assert root["_rc"] == 0, root
    assert (live / "chain.pem").read_text().strip() == (
        live.parent / "root.pem"
    ).read_text().strip()
    if shutil.which("openssl"):
        v = subprocess.run(
            ["openssl", "verify", "-CAfile", str(live / "chain.pem"), str(live / "cert.pem")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert v.returncode == 0 and "OK" in v.stdout, v.stdout + v.stderr
    ver = dpkid_json("verify", str(live / "cert.pem"), "--home", a.home)
    assert ver["_rc"] == 0, ver
    return ledger_id(live / "cert.pem")


def test_certbot_obtains_renews_and_revokes_through_the_ledger(tmp_path: Path) -> None:
    with acme_net(tmp_path) as a:
        a.set_a("shop.test", "www.shop.test")
        eab = a.eab()
        cfg = tmp_path / "certbot"
        owner = dpkid_json("account", "show", "--account-key", a.account_key, "--home", a.home)
        balance0 = int(owner["balance"])

        # 1. Obtain: http-01, certbot's own standalone server answers the validators.
        r = certbot(
            a, cfg, "certonly", "--standalone", "--http-01-address", "127.0.0.1",
            "--http-01-port", str(a.http_port), "--agree-tos",
            "--register-unsafely-without-email", "--eab-kid", eab["eab_kid"],
            "--eab-hmac-key", eab["eab_hmac_key"], "-d", "shop.test", "-d", "www.shop.test",
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        live = cfg / "config" / "live" / "shop.test"
        first = check_leaf(a, live, ["shop.test", "www.shop.test"])
        st = cert_status(a, first)
        assert st["_rc"] == 0 and st["status"] == "valid", st
        # The user's account owns the certificate and paid for it; the server paid nothing.
        assert st["record"]["owner"] == owner["address"], st  # type: ignore[index]
        after = dpkid_json("account", "show", "--account-key", a.account_key, "--home", a.home)
        assert int(after["balance"]) < balance0

        # 2. Renew: a new certificate on the ledger, with no new challenge
        # (the authorizations are reused within the policy's window).
        r = certbot(
            a, cfg, "renew", "--force-renewal", "--cert-name", "shop.test",
            "--no-random-sleep-on-renew",
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        second = check_leaf(a, live, ["shop.test", "www.shop.test"])
        assert second != first
        st2 = cert_status(a, second)
        assert st2["_rc"] == 0 and st2["status"] == "valid", st2

        # 3. Revoke: on the ledger, with certbot's reason.
        r = certbot(
            a, cfg, "revoke", "--cert-name", "shop.test", "--reason", "keycompromise",
            "--no-delete-after-revoke",
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        st3 = cert_status(a, second)
        assert st3["status"] == "revoked", st3
        assert st3["record"]["revocation_reason_name"] == "keyCompromise", st3  # type: ignore[index]
        ver = dpkid_json("verify", str(live / "cert.pem"), "--home", a.home)
        assert ver["_rc"] == 1, ver

        # 4. dns-01 for a wildcard, --manual with an auth hook writing the zone.
        hook = tmp_path / "hook.py"
        hook.write_text(HOOK)
        r = certbot(
            a, cfg, "certonly", "--manual", "--preferred-challenges", "dns",
            "--manual-auth-hook", f"{sys.executable} {hook}", "-d", "*.shop.test",
            "--cert-name", "wild",
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        wild = check_leaf(a, cfg / "config" / "live" / "wild", ["*.shop.test"])
        assert cert_status(a, wild)["status"] == "valid"
