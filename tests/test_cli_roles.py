"""The `dpkid` role commands (dpkid/cli/roles.py) against one real 4-validator testnet.

Every command runs as its own process (``python -m dpkid ...``), as a user
would run it. The validators' domain checks ask only a test DNS server and
connect only to a challenge web server, both on 127.0.0.1 and run by this
module: what the CLI prints as "publish this" is published there, and the
validators decide from it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dpkid.dev.dns_server import DevDnsServer, Zone
from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap
from tests.netutil import LocalNet, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


@dataclass
class Net:
    net: LocalNet
    zone: Zone
    web: ChallengeMap
    tmp: Path

    def home(self, i: int) -> str:
        return str(self.net.home(i))

    def key(self, name: str) -> str:
        return str(self.net.root / "keys" / f"{name}.json")

    def app(self, app_id: str) -> dict[str, Any]:
        res: dict[str, Any] = self.net.rpc(0, "application_get", {"app_id": app_id})
        app: dict[str, Any] = res["application"]
        return app

    def sync(self) -> None:
        """Wait until every node has what the nodes asked so far have committed."""
        h = max(self.net.height(i) for i in range(4))
        self.net.wait_height([0, 1, 2, 3], h, timeout_s=60)

    def publish(self, challenge: dict[str, Any]) -> None:
        """Publish an application's http-01 and dns-01 answers, as in the RPC's view."""
        for url in challenge["http"]:
            u = urlsplit(url)
            assert u.hostname is not None
            self.zone.set_a(u.hostname, ["127.0.0.1"])
            self.web.set_path(u.hostname, u.path, challenge["http_body"])
        for rec in challenge["dns"]:
            self.zone.set_txt(rec["name"], [rec["value"]])


@pytest.fixture(scope="module")
def tn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("cli_roles")
    zone, web = Zone(), ChallengeMap()
    with DevDnsServer(zone) as dns_srv, ChallengeHttpServer(web) as http_srv:
        net = LocalNet(
            root / "tn",
            validators=4,
            extra_args=["--dns-resolver", dns_srv.address, "--http-port", str(http_srv.port)],
        )
        try:
            net.start_all()
            net.wait_height([0, 1, 2, 3], 2, timeout_s=120)
            yield Net(net, zone, web, root)
        finally:
            net.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DPKID_HOME"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dpkid(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpkid", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, (
        f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    )
    return res.stdout


def okj(res: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(res))


def fails(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit status ``code`` with exactly one line on stderr (and no traceback)."""
    assert res.returncode == code, (
        f"exit {res.returncode}, wanted {code}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    )
    err = res.stderr.strip()
    assert err and "\n" not in err, f"not one line:\n{res.stderr}"
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def _address(key_file: str) -> str:
    from dpkid.daemon.config import read_key

    return read_key(Path(key_file)).address.hex()


def _ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    k = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return k


def _csr(path: Path, key: ec.EllipticCurvePrivateKey, names: list[str]) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shop Ltd"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def _printed_challenge(text: str) -> dict[str, Any]:
    """The challenge as the human output states it, in the RPC's shape."""
    http = re.findall(r"http-01\s+serve URL\s+(\S+)", text)
    bodies = set(re.findall(r"^\s+body\s+(\S+)\s*$", text, re.M))
    dns = re.findall(r'dns-01\s+TXT record\s+(\S+)\s+"([^"]+)"', text)
    assert dns, text
    assert len(bodies) <= 1, bodies
    return {
        "http": http,
        "http_body": bodies.pop() if bodies else "",
        "dns": [{"name": n, "value": v} for n, v in dns],
    }


def _issued(tn: Net, app_id: str, timeout_s: float = 120) -> str:
    def done() -> str | None:
        app = tn.app(app_id)
        assert app["status"] in ("pending", "issued"), app
        return str(app["cert_id"]) if app["status"] == "issued" else None

    return wait_for(done, timeout_s, f"application {app_id} to be issued", interval_s=0.5)


# ---------------------------------------------------------------------------- tests


def test_status_and_validators(tn: Net) -> None:
    st = okj(dpkid("status", "--home", tn.home(0), "--json"))
    assert st["chain_id"] == tn.net.info["chain_id"] and st["height"] >= 2
    text = ok(dpkid("status", "--home", tn.home(1)))
    assert tn.net.info["chain_id"] in text and "peers" in text
    vals = okj(dpkid("validators", "--home", tn.home(2), "--json"))
    assert len(vals["validators"]) == 4 and vals["total_power"] == 40
    text = ok(dpkid("validators", "--socket", str(tn.net.home(3) / "dpkid.sock")))
    assert "4 validators, total power 40" in text


def test_account_new_show_transfer(tn: Net) -> None:
    alice = tn.tmp / "alice.json"
    new = okj(dpkid("account", "new", "--out", str(alice), "--json"))
    assert alice.stat().st_mode & 0o777 == 0o600
    addr = new["address"]
    assert len(addr) == 40 and len(new["public_key"]) == 64
    fails(dpkid("account", "new", "--out", str(alice)), 2, "exists")

    text = ok(
        dpkid(
            "account", "transfer", "--home", tn.home(1), "--account-key", tn.key("account0"),
            "--to", addr, "--amount", "12345", "--wait",
        )
    )  # fmt: skip
    assert "transferred 12345" in text
    tn.sync()
    shown = okj(dpkid("account", "show", addr, "--home", tn.home(2), "--json"))
    assert shown["balance"] == 12345 and shown["nonce"] == 0
    assert "12345" in ok(
        dpkid("account", "show", "--account-key", str(alice), "--home", tn.home(0))
    )

    # More than the balance (or the balance but not the fee): refused before
    # anything is sent, exit 1; no fee is charged and the nonce does not move.
    for amount in ("20000", "12345"):
        fails(
            dpkid(
                "account", "transfer", "--home", tn.home(0), "--account-key", str(alice),
                "--to", addr, "--amount", amount, "--wait",
            ),
            1,
            "has 12345, too little to send",
            "nothing was sent",
        )  # fmt: skip
    refused = dpkid(
        "account", "transfer", "--home", tn.home(0), "--account-key", str(alice),
        "--to", addr, "--amount", "20000", "--json",
    )  # fmt: skip
    assert refused.returncode == 1 and json.loads(refused.stdout)["needed"] == 20010
    shown = okj(dpkid("account", "show", addr, "--home", tn.home(0), "--json"))
    assert shown["balance"] == 12345 and shown["nonce"] == 0
    # What the balance covers, fee included, goes through.
    text = ok(
        dpkid(
            "account", "transfer", "--home", tn.home(0), "--account-key", str(alice),
            "--to", _address(tn.key("account0")),
            "--amount", "12335", "--wait",
        )
    )  # fmt: skip
    assert "balance now 0" in text


def test_dv_apply_publish_issue_renew(tn: Net) -> None:
    """apply prints the app id and challenges; once they are published, validators issue."""
    key = tn.tmp / "dv.pem"
    _ec_key(key)
    out = ok(
        dpkid(
            "cert", "apply", "--home", tn.home(0), "--type", "dv",
            "--domain", "Bücher.CLI.test", "--domain", "www.cli.test",
            "--cert-key", str(key), "--account-key", tn.key("account1"),
        )
    )  # fmt: skip
    m = re.search(r"^application ([0-9a-f]{64})$", out, re.M)
    assert m, out
    app_id = m.group(1)
    # The printed instructions are exactly the chain's challenge, for the A-labels.
    printed = _printed_challenge(out)
    app = tn.app(app_id)
    assert app["domains"] == ["www.cli.test", "xn--bcher-kva.cli.test"]
    assert printed["http"] == app["challenge"]["http"]
    assert printed["http_body"] == app["challenge"]["http_body"]
    assert printed["dns"] == [
        {"name": d["name"], "value": d["value"]} for d in app["challenge"]["dns"]
    ]
    assert "http://xn--bcher-kva.cli.test/.well-known/dpki-challenge/" in out

    # The names do not resolve yet, so validators keep retrying; publish now.
    tn.publish(printed)
    cert_id = _issued(tn, app_id)
    tn.sync()

    st = okj(dpkid("cert", "status", cert_id, "--home", tn.home(3), "--json"))
    assert st["kind"] == "certificate" and st["status"] == "valid"
    text = ok(dpkid("cert", "status", app_id, "--home", tn.home(1)))
    assert "issued" in text and cert_id in text
    shown = okj(dpkid("cert", "show", cert_id, "--home", tn.home(2), "--json"))
    assert shown["record"]["domains"] == ["www.cli.test", "xn--bcher-kva.cli.test"]
    listed = okj(
        dpkid("cert", "list", "--domain", "BÜCHER.cli.test", "--home", tn.home(0), "--json")
    )
    assert [c["cert_id"] for c in listed["certificates"]] == [cert_id]
    assert cert_id in ok(dpkid("cert", "list", "--domain", "www.cli.test", "--home", tn.home(0)))

    # Renew with a new key: prepared first (the challenge is known before
    # submission), published, then submitted and followed with --wait.
    key2 = tn.tmp / "dv2.pem"
    _ec_key(key2)
    prepared = tn.tmp / "renew.json"
    prep = okj(
        dpkid(
            "cert", "renew", cert_id, "--home", tn.home(0), "--account-key", tn.key("account1"),
            "--new-cert-key", str(key2), "--days", "30", "--prepare", str(prepared), "--json",
        )
    )  # fmt: skip
    assert prep["domains"] == ["www.cli.test", "xn--bcher-kva.cli.test"]
    tn.publish(prep["challenge"])
    res = dpkid("cert", "submit", str(prepared), "--home", tn.home(1), "--wait", "--timeout", "120")
    text = ok(res)
    assert prep["app_id"] in text and "attestations" in text
    new_cert = re.findall(r"issued: certificate ([0-9a-f]{64})", text)
    assert len(new_cert) == 1
    tn.sync()
    # The key rotation retired the old certificate (superseded): status exits 1.
    old = dpkid("cert", "status", cert_id, "--home", tn.home(2), "--json")
    assert old.returncode == 1 and json.loads(old.stdout)["status"] == "revoked"
    assert okj(dpkid("cert", "status", new_cert[0], "--home", tn.home(2), "--json"))["status"] == (
        "valid"
    )
    # Submitting the same prepared application again is refused by the node.
    fails(dpkid("cert", "submit", str(prepared), "--home", tn.home(1)), 1)


def test_dv_prepare_submit_wait_and_revoke_by_key_holder(tn: Net) -> None:
    key = tn.tmp / "api.pem"
    _ec_key(key)
    prepared = tn.tmp / "api.json"
    prep = okj(
        dpkid(
            "cert", "apply", "--home", tn.home(2), "--type", "dv", "--domain", "api.cli.test",
            "--cert-key", str(key), "--account-key", tn.key("account3"), "--prepare", str(prepared),
            "--json",
        )
    )  # fmt: skip
    tn.publish(prep["challenge"])
    done = okj(dpkid("cert", "submit", str(prepared), "--home", tn.home(2), "--wait", "--json"))
    assert done["status"] == "issued" and done["app_id"] == prep["app_id"]
    cert_id = done["cert_id"]
    assert done["certificate"]["status_at_head"] == "valid"
    tn.sync()

    # Not the owner and no certificate key: refused before anything is sent.
    fails(
        dpkid(
            "cert", "revoke", cert_id, "--reason", "keyCompromise",
            "--account-key", tn.key("account0"), "--home", tn.home(0),
        ),
        1,
        "does not own",
    )  # fmt: skip
    # The holder of the certificate key revokes, another account pays.
    out = ok(
        dpkid(
            "cert", "revoke", cert_id, "--reason", "keyCompromise", "--cert-key", str(key),
            "--account-key", tn.key("account0"), "--home", tn.home(0),
        )
    )  # fmt: skip
    assert "revoked certificate" in out
    tn.sync()
    st = dpkid("cert", "status", cert_id, "--home", tn.home(1))
    assert st.returncode == 1 and "revoked" in st.stdout and "keyCompromise" in st.stdout
    fails(
        dpkid(
            "cert", "revoke", cert_id, "--reason", "superseded",
            "--account-key", tn.key("account3"), "--home", tn.home(0),
        ),
        1,
        "already revoked",
    )  # fmt: skip


class _Lines:
    """Lines of a running process's stdout, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.q.put(line)
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} in:\n{''.join(self.seen)}"
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"output ended before {pattern!r}:\n{''.join(self.seen)}"
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def rest(self) -> str:
        while True:
            line = self.q.get(timeout=30)
            if line is None:
                return "".join(self.seen)
            self.seen.append(line)


def test_ov_apply_wait_endorse_issue_withdraw(tn: Net) -> None:
    key = tn.tmp / "shop.pem"
    csr = tn.tmp / "shop.csr"
    _csr(csr, _ec_key(key), ["shop.cli.test", "*.shop.cli.test"])
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "dpkid", "cert", "apply", "--home", tn.home(1),
            "--type", "ov", "--csr", str(csr), "--account-key", tn.key("account2"),
            "--wait", "--timeout", "240",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )  # fmt: skip
    try:
        lines = _Lines(proc)
        app_id = HEX64.findall(lines.until(r"^application [0-9a-f]{64}$", 120))[0]
        lines.until(r"^follow progress:", 30)
        text = "".join(lines.seen)
        # The CSR gave the names (both) and the organization.
        assert (
            "*.shop.cli.test" in text
            and "Shop Ltd (DE" in text
            and "2 registered endorsers" in text
        )
        tn.publish(_printed_challenge(text))
        tn.sync()

        # Endorsers find it by scanning recent blocks, and approve it.
        pending = okj(
            dpkid(
                "endorse",
                "list-pending",
                "--endorser-key",
                tn.key("endorser0"),
                "--home",
                tn.home(0),
                "--json",
            )
        )
        assert app_id in [a["app_id"] for a in pending["applications"]]
        assert app_id in ok(
            dpkid(
                "endorse",
                "list-pending",
                "--endorser-key",
                tn.key("endorser1"),
                "--home",
                tn.home(3),
            )
        )
        ok(
            dpkid(
                "endorse",
                "approve",
                app_id,
                "--endorser-key",
                tn.key("endorser0"),
                "--home",
                tn.home(0),
            )
        )
        tn.sync()
        fails(
            dpkid(
                "endorse",
                "approve",
                app_id,
                "--endorser-key",
                tn.key("endorser0"),
                "--home",
                tn.home(2),
            ),
            1,
            "already decided",
        )
        ok(
            dpkid(
                "endorse", "approve", app_id, "--endorser-key", tn.key("endorser1"),
                "--reason", "registry checked", "--home", tn.home(3),
            )
        )  # fmt: skip
        line = lines.until(r"^issued: certificate [0-9a-f]{64}$", 200)
        cert_id = HEX64.findall(line)[0]
        out = lines.rest()
        assert proc.wait(timeout=30) == 0, out + (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # Progress showed the endorsements as they arrived, one line per change.
    assert "endorsements 1 approve of 2 needed" in out or "endorsements 2 approve" in out
    assert "endorsements 2 approve of 2 needed" in out

    tn.sync()
    app = tn.app(app_id)
    assert len(app["endorsements"]) == 2 and all(e["approve"] for e in app["endorsements"])
    assert app_id not in ok(
        dpkid(
            "endorse", "list-pending", "--endorser-key", tn.key("endorser2"), "--home", tn.home(0)
        )
    )
    cert = okj(dpkid("cert", "show", cert_id, "--home", tn.home(1), "--json"))["record"]
    assert cert["cert_type"] == "OV" and cert["org"]["name"] == "Shop Ltd"

    # One endorser withdraws: fewer than k_ov remain, so the certificate falls to DV.
    out = ok(
        dpkid(
            "endorse",
            "withdraw",
            cert_id,
            "--endorser-key",
            tn.key("endorser0"),
            "--home",
            tn.home(2),
        )
    )
    assert "now DV" in out
    tn.sync()
    fails(
        dpkid(
            "endorse",
            "withdraw",
            cert_id,
            "--endorser-key",
            tn.key("endorser2"),
            "--home",
            tn.home(2),
        ),
        1,
        "does not endorse",
    )


def test_async_node_client_and_sync_client(tn: Net) -> None:
    """The library side of the CLI: NodeClient (trio) and SyncClient helpers."""
    import secrets

    import trio

    from dpkid.client.rpc import (
        NodeClient,
        RpcClientError,
        SyncClient,
        build_and_submit,
        build_and_submit_async,
    )
    from dpkid.core.crypto import SigningKey
    from dpkid.core.types import Transfer
    from dpkid.daemon.config import read_key

    payer = read_key(Path(tn.key("account0")))
    to = SigningKey(secrets.token_bytes(32)).address

    async def main() -> None:
        async with await NodeClient.connect(tn.net.home(2)) as c:
            st = await c.status()
            assert st["chain_id"] == tn.net.info["chain_id"]
            h = await build_and_submit_async(c, payer, Transfer(to, 777))
            res = await c.wait_tx(h, timeout_s=60)
            assert res["committed"] and res["code"] == 0
            assert (await c.account(to))["balance"] == 777
            assert len((await c.validators())["validators"]) == 4
            assert len(await c.endorsers()) == 3
            with pytest.raises(RpcClientError) as exc:
                await c.cert("00" * 32)
            assert exc.value.code == -32004
            # Proofs are against the latest header's app hash, which commits to the
            # state one block behind: retry until the account shows in it.
            with trio.fail_after(30):
                while True:
                    try:
                        proof = await c.proof(address=to)
                        if proof["present"]:
                            break
                    except RpcClientError:  # not ready: retry after the next block
                        pass
                    await trio.sleep(0.3)
            assert proof["record"]["balance"] == 777 and proof["proof"]

    trio.run(main)

    sc = SyncClient(tn.net.home(1))
    h = build_and_submit(sc, payer, Transfer(to, 23))
    assert sc.wait_tx(h, timeout_s=60)["code"] == 0
    assert sc.account(to)["balance"] == 800
    assert [v["address"] for v in sc.validators()["validators"]] == [
        v["address"] for v in tn.net.rpc(0, "validators_list")["validators"]
    ]


def test_errors_are_one_line_with_exit_codes(tn: Net) -> None:
    h = ["--home", tn.home(0)]
    unknown = "00" * 32
    fails(dpkid("cert", "show", unknown, *h), 1, unknown)
    fails(dpkid("cert", "status", unknown, *h), 1, "no certificate, application or authorization")
    fails(dpkid("cert", "revoke", unknown, "--reason", "superseded", "--account-key",
                tn.key("account0"), *h), 1, "no such certificate")  # fmt: skip
    fails(
        dpkid("endorse", "approve", unknown, "--endorser-key", tn.key("endorser0"), *h),
        1,
        "no such",
    )
    fails(dpkid("cert", "status", "xyz", *h), 2, "hex")
    fails(dpkid("account", "show", "abcd", *h), 2, "40 hex digits")
    fails(
        dpkid("account", "show", "--account-key", str(tn.tmp / "missing.json"), *h),
        2,
        "does not exist",
    )
    key = tn.tmp / "err.pem"
    _ec_key(key)
    apply = ["cert", "apply", "--cert-key", str(key), "--account-key", tn.key("account0")]
    fails(dpkid(*apply, "--type", "dv", "--domain", "exa mple.com", *h), 2, "bad domain")
    fails(dpkid(*apply, "--type", "dv", "--domain=-bad-.example", *h), 2, "bad domain")
    fails(dpkid("cert", "list", "--domain", "a..b", *h), 2, "bad domain")
    fails(dpkid(*apply, "--type", "ov", "--domain", "a.cli.test", *h), 2, "--org-name")
    fails(dpkid(*apply, "--type", "dv", "--domain", "a.cli.test", "--org-name", "X", *h), 2, "DV")
    sock = str(tn.net.home(0) / "dpkid.sock")
    fails(
        dpkid(*apply, "--type", "dv", "--domain", "a.cli.test", "--socket", sock),
        2,
        "give --escrow",
    )
    fails(dpkid("cert", "apply", "--type", "dv", "--domain", "a.cli.test", *h), 2, "--account-key")
    fails(dpkid("cert", "revoke", unknown, "--reason", "bogus", "--account-key", "x", *h), 2)
    fails(
        dpkid("endorse", "list-pending", "--endorser-key", tn.key("account0"), *h),
        1,
        "not a registered",
    )
    # No node there.
    fails(dpkid("status", "--socket", str(tn.tmp / "none.sock")), 2, "cannot reach the node")
    empty = tn.tmp / "empty-home"
    empty.mkdir(exist_ok=True)
    fails(dpkid("validators", "--home", str(empty)), 2, "cannot reach the node")
    # Under --json the error is the one JSON document on stdout, and stderr is quiet.
    res = dpkid("validators", "--home", str(empty), "--json")
    assert res.returncode == 2 and res.stderr == ""
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 2 and "cannot reach the node" in doc["error"]
    fails(dpkid("account", "show", "00" * 20, "--home", str(empty)), 2, "cannot reach the node")


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from dpkid.cli.main import build_parser

    parser = build_parser()
    for cmd in (
        ["account", "new"], ["account", "show"], ["account", "transfer"],
        ["cert", "apply"], ["cert", "submit"], ["cert", "status"], ["cert", "show"],
        ["cert", "list"], ["cert", "revoke"], ["cert", "renew"],
        ["endorse", "list-pending"], ["endorse", "approve"], ["endorse", "reject"],
        ["endorse", "withdraw"], ["endorse", "revoke"], ["validators"], ["status"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*cmd, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "exit status" in text, cmd
        assert "--json" in text, cmd
        if cmd[0] != "account" or cmd[1] != "new":
            assert "--socket" in text and "--rpc" in text and "DPKID_HOME" in text, cmd
        if cmd == ["endorse", "list-pending"]:
            assert "scans" in text and "--blocks" in text
