"""The validators' threshold-signed X.509, end to end on real `dpkid start`
processes, checked by unmodified `openssl` and Python `ssl` (SPEC §16,
protocol/SPEC.md §14.6).

* DV, OV and EV certificates issued on a 4-validator testnet are exported with
  `dpkid cert export`, verify against `dpkid root export`'s root.pem alone and
  serve TLS to a client that trusts only that root; a revocation and an EV
  degradation reach the threshold-signed CRL that `openssl -crl_check` reads.
* A validator sending invalid signature shares (``test_byzantine =
  "bad_shares"``) is named in a ``tss_bad_share`` event, jailed, and the others
  go on signing without it.
* A validator replaced by governance: the key is re-shared to the new set,
  the root (and so every relying party's root.pem) stays the same.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dpkid.client.rpc import RpcClientError
from dpkid.core import codec
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.genesis import genesis_from_json, genesis_to_json
from dpkid.core.keys import spki_der_of
from dpkid.core.state.machine import APP_TAG, GOV_TAG, cert_id_for
from dpkid.core.types import (
    Attestation,
    CertApply,
    DvAttest,
    Endorse,
    EndorseWithdraw,
    GovPropose,
    GovVote,
    OrgIdentity,
    Revoke,
    SetValidator,
    TssSign,
    TxBody,
    decode_tx,
    sign_tx,
)
from dpkid.daemon.config import read_key
from tests.netutil import LocalNet, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed"),
]

STEP_S = 60  # every single wait below is bounded by this
FEE = 10  # Policy.min_tx_fee
ESCROW = {"DV": 1_000, "OV": 5_000, "EV": 20_000}  # Policy.fee_dv / fee_ov / fee_ev
DV_POLICY_OID = "2.23.140.1.2.1"
EV_POLICY_OID = "2.23.140.1.1"
CERT_POLICIES = x509.ObjectIdentifier("2.5.29.32")
KEY_COMPROMISE = 1


# --------------------------------------------------------------------------- the net


@pytest.fixture
def tn(tmp_path: Path) -> Iterator[Net]:
    t = Net(tmp_path / "tn", validators=4)
    try:
        yield t
    finally:
        t.close()


def _set(home: Path, **values: Any) -> None:
    """Add settings to a home's config.toml (as an operator would edit it)."""
    path = home / "config.toml"
    doc = tomllib.loads(path.read_text())
    doc["node"].update(values)
    path.write_text(tomli_w.dumps(doc))


class Net(LocalNet):
    """A LocalNet that sends signed transactions and waits for their receipts."""

    def __init__(self, root: Path, validators: int) -> None:
        super().__init__(root, validators=validators)
        self.chain = str(self.info["chain_id"])
        self.vals = [read_key(self.home(i) / "node_key.json") for i in range(validators)]
        self.accounts = [read_key(Path(p)) for p in self.info["account_keys"]]
        self.endorsers = [read_key(Path(p)) for p in self.info["endorser_keys"]]

    def start_all(self) -> None:
        """Start every node and wait until each answers on its socket."""
        super().start_all()
        self.wait_height(list(self.procs), 1, timeout_s=STEP_S)

    def send(self, node: int, key: SigningKey, body: TxBody) -> str:
        """Sign ``body`` with ``key``'s next nonce and submit it to ``node``; the
        hash. A validator's own node signs its threshold-key txs with the same
        account, so a nonce already taken there is simply taken again."""

        def submit() -> str | None:
            acct = self.rpc(node, "account_get", {"address": key.address.hex()})
            raw = codec.encode(sign_tx(key, self.chain, acct["next_nonce"], FEE, body))
            try:
                h: str = self.rpc(node, "tx_submit", {"tx": raw.hex()})["hash"]
            except RpcClientError as exc:
                data = exc.data if isinstance(exc.data, dict) else {}
                if data.get("name") == "BAD_NONCE" or data.get("retryable"):
                    return None
                raise AssertionError(f"node{node} refused {type(body).__name__}: {exc}") from None
            return h

        return wait_for(submit, STEP_S, f"node{node} to take a {type(body).__name__}")

    def receipt(self, node: int, h: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            got: dict[str, Any] = self.rpc(node, "tx_get", {"hash": h})
            assert not got.get("dropped"), f"tx {h} dropped: {got['dropped']}"
            return got if got["committed"] else None

        return wait_for(done, STEP_S, f"tx {h} to commit")

    def run(self, node: int, key: SigningKey, body: TxBody) -> dict[str, Any]:
        """``send`` and wait for a successful receipt."""
        got = self.receipt(node, self.send(node, key, body))
        assert got["code"] == 0, f"{type(body).__name__} failed: {got['code_name']} {got['log']}"
        return got

    def run_all(self, txs: list[tuple[int, SigningKey, TxBody]]) -> list[dict[str, Any]]:
        """Send all (each account's in order, to one node), then wait for all."""
        sent = [(node, self.send(node, key, body), body) for node, key, body in txs]
        out = []
        for node, h, body in sent:
            got = self.receipt(node, h)
            assert got["code"] == 0, f"{type(body).__name__}: {got['code_name']} {got['log']}"
            out.append(got)
        return out

    def dpkid(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dpkid", *args],
            capture_output=True,
            text=True,
            timeout=STEP_S + 30,
        )

    def export_root(self, node: int, out: Path) -> bytes:
        r = self.dpkid(
            "root", "export", "--home", str(self.home(node)), "--out", str(out), "--wait", "60"
        )
        assert r.returncode == 0, f"root export: {r.stdout}{r.stderr}"
        return out.read_bytes()


def openssl_verify(root: Path, leaf: Path, crl: Path | None = None) -> tuple[int, str]:
    extra = ["-crl_check", "-CRLfile", str(crl)] if crl is not None else []
    r = subprocess.run(
        ["openssl", "verify", *extra, "-CAfile", str(root), str(leaf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stdout + r.stderr


# --------------------------------------------------------------------------- certificates


CertType = Literal["DV", "OV", "EV"]


@dataclass
class Issued:
    cert_type: CertType
    domain: str
    key: Any  # the certificate's private key (cryptography)
    owner: SigningKey
    cert_id: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def _org(cert_type: str) -> OrgIdentity | None:
    if cert_type == "DV":
        return None
    if cert_type == "OV":
        return OrgIdentity("Example OV Ltd", "GB", locality="London")
    return OrgIdentity(
        "Example EV Inc", "US", state="Delaware", registration_id="4242", jurisdiction="US-DE"
    )


def issue(net: Net, wanted: list[Issued], attestors: list[int]) -> None:
    """Apply for each certificate, endorse the OV/EV ones (k_ov = 2, k_ev = 3)
    and attest every domain with the given validators; wait until all are issued."""
    applies: list[tuple[int, SigningKey, TxBody]] = [
        (
            0,
            c.owner,
            CertApply(
                c.cert_type,
                [c.domain],
                spki_der_of(c.key),
                30,
                ESCROW[c.cert_type],
                _org(c.cert_type),
            ),
        )
        for c in wanted
    ]
    receipts = net.run_all(applies)
    app_ids = [sha256(APP_TAG + bytes.fromhex(r["hash"])) for r in receipts]
    for c, app_id in zip(wanted, app_ids, strict=True):
        c.cert_id = cert_id_for(app_id).hex()
    txs: list[tuple[int, SigningKey, TxBody]] = []
    for c, app_id in zip(wanted, app_ids, strict=True):
        k = {"DV": 0, "OV": 2, "EV": 3}[c.cert_type]
        txs += [(0, e, Endorse(app_id, True)) for e in net.endorsers[:k]]
    items = [Attestation(a, True, "dns-01") for a in app_ids]
    txs += [(i, net.vals[i], DvAttest(items)) for i in attestors]
    net.run_all(txs)
    for c in wanted:

        def issued(c: Issued = c) -> bool:
            got = net.rpc(0, "cert_get", {"cert_id": c.cert_id})["certificate"]
            assert got["cert_type"] == c.cert_type
            return bool(got["status"] == "valid")

        wait_for(issued, STEP_S, f"the {c.cert_type} certificate to be issued")


def export_cert(net: Net, node: int, c: Issued, tmp: Path, tag: str = "") -> tuple[Path, Path]:
    """`dpkid cert export` twice: the leaf alone (for openssl) and leaf + root
    (for a TLS server)."""
    name = f"{c.cert_type.lower()}{tag}"
    leaf, chain = tmp / f"{name}-leaf.pem", tmp / f"{name}-chain.pem"
    for out, extra in ((leaf, ["--leaf-only"]), (chain, [])):
        r = net.dpkid(
            "cert",
            "export",
            c.cert_id,
            "--home",
            str(net.home(node)),
            "--out",
            str(out),
            "--wait",
            "60",
            *extra,
        )
        assert r.returncode == 0, f"cert export {c.cert_type}: {r.stdout}{r.stderr}"
    return leaf, chain


def write_key(tmp: Path, c: Issued) -> Path:
    p = tmp / f"{c.cert_type.lower()}.key"
    p.write_bytes(
        c.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return p


def tls_handshake(root: Path, chain: Path, key: Path, server_hostname: str) -> BaseException | None:
    """Serve ``chain`` with ``key`` on 127.0.0.1 from a thread; connect with
    Python's default client context trusting only ``root``. None, or the
    client's error."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(chain), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(20)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello from dpkid\n")
        except (OSError, ssl.SSLError):
            pass  # the client's verdict is the one that counts

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(root))
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    error: BaseException | None = None
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            assert tls.recv(100) == b"hello from dpkid\n"
    except (OSError, ssl.SSLError) as exc:
        error = exc
    finally:
        thread.join(timeout=30)
        listener.close()
    assert not thread.is_alive(), "the TLS server thread did not finish"
    return error


def policy_oids(pem: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    pol = cert.extensions.get_extension_for_oid(CERT_POLICIES).value
    assert isinstance(pol, x509.CertificatePolicies)
    return [p.policy_identifier.dotted_string for p in pol]


def serial_of(pem: Path) -> int:
    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


def crl_listing(net: Net, node: int, out: Path, serials: list[int]) -> Path:
    """Poll `dpkid root crl` until the CRL it writes lists every serial."""

    def listed() -> bool:
        r = net.dpkid("root", "crl", "--home", str(net.home(node)), "--out", str(out))
        if r.returncode != 0:
            return False  # no CRL signed yet (-32005)
        crl = x509.load_pem_x509_crl(out.read_bytes())
        return all(crl.get_revoked_certificate_by_serial_number(s) is not None for s in serials)

    wait_for(listed, STEP_S, f"a CRL listing serials {serials}", interval_s=0.5)
    return out


def tss_bad_share_events(net: Net, node: int, addr: str) -> list[dict[str, Any]]:
    """The ``tss_bad_share`` events naming ``addr`` in the receipts of TssSign
    transactions, over the whole chain. The shares are checked when an
    attempt's last share comes in, so the event is in that signer's receipt,
    whoever it is."""
    found = []
    for h in range(1, net.height(node) + 1):
        for raw_hex in net.rpc(node, "block_get", {"height": h})["txs"]:
            raw = bytes.fromhex(raw_hex)
            tx = decode_tx(raw)
            if not isinstance(tx.body, TssSign):
                continue
            got = net.rpc(node, "tx_get", {"hash": sha256(raw).hex()})
            for ev in got["receipt"]["events"]:
                if ev["kind"] == "tss_bad_share" and ev["ref"] == addr:
                    found.append({"height": h, **ev})
    return found


# --------------------------------------------------------------------------- tests


def test_standard_tls_clients_verify_dpkid_certificates(tn: Net, tmp_path: Path) -> None:
    net = tn
    net.start_all()
    root = tmp_path / "root.pem"
    net.export_root(1, root)
    certs = [
        Issued("DV", "dv.example.test", ed25519.Ed25519PrivateKey.generate(), net.accounts[0]),
        Issued("OV", "ov.example.test", ec.generate_private_key(ec.SECP256R1()), net.accounts[1]),
        Issued(
            "EV",
            "ev.example.test",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            net.accounts[2],
        ),
    ]
    issue(net, certs, attestors=[0, 1, 2])
    for n, c in enumerate(certs):
        leaf, chain = export_cert(net, n + 1, c, tmp_path)
        c.files = {"leaf": leaf, "chain": chain, "key": write_key(tmp_path, c)}
        rc, out = openssl_verify(root, leaf)
        assert rc == 0 and "OK" in out, f"{c.cert_type}: {out}"
        err = tls_handshake(root, chain, c.files["key"], c.domain)
        assert err is None, f"{c.cert_type} TLS handshake: {err!r}"
        err = tls_handshake(root, chain, c.files["key"], "other.example.test")
        assert isinstance(err, ssl.SSLCertVerificationError), f"{c.cert_type}: {err!r}"
        assert "hostname mismatch" in str(err).lower(), str(err)
    dv, ov, ev = certs
    assert EV_POLICY_OID in policy_oids(ev.files["leaf"])
    # The same threshold-signed file also passes dpkid's own trust-no-node check
    # (the ledger reference it carries), from another node.
    r = net.dpkid("verify", str(dv.files["chain"]), "--home", str(net.home(3)))
    assert r.returncode == 0, f"dpkid verify: {r.stdout}{r.stderr}"

    # The owner revokes the DV certificate: the next CRL lists it.
    net.run(0, dv.owner, Revoke(bytes.fromhex(dv.cert_id), KEY_COMPROMISE))
    crl = crl_listing(net, 2, tmp_path / "crl.pem", [serial_of(dv.files["leaf"])])
    rc, out = openssl_verify(root, dv.files["leaf"], crl)
    assert rc != 0 and "certificate revoked" in out, out
    rc, out = openssl_verify(root, ov.files["leaf"], crl)
    assert rc == 0 and "OK" in out, f"OV with -crl_check: {out}"

    # One endorser of three withdraws: the EV certificate falls to DV, is signed
    # again as version 1 with the DV policy, and version 0 goes on the CRL.
    net.run(0, net.endorsers[0], EndorseWithdraw(bytes.fromhex(ev.cert_id), "test"))
    wait_for(
        lambda: net.rpc(0, "cert_x509", {"cert_id": ev.cert_id})["version"] == 1,
        STEP_S,
        "version 1 of the degraded EV certificate to be signed",
    )
    leaf1, _ = export_cert(net, 3, ev, tmp_path, tag="-v1")
    assert serial_of(leaf1) != serial_of(ev.files["leaf"])
    oids = policy_oids(leaf1)
    assert DV_POLICY_OID in oids and EV_POLICY_OID not in oids, oids
    rc, out = openssl_verify(root, leaf1)
    assert rc == 0 and "OK" in out, f"EV v1: {out}"
    crl2 = crl_listing(net, 0, tmp_path / "crl2.pem", [serial_of(ev.files["leaf"])])
    rc, out = openssl_verify(root, ev.files["leaf"], crl2)
    assert rc != 0 and "certificate revoked" in out, f"old EV leaf: {out}"
    rc, out = openssl_verify(root, leaf1, crl2)
    assert rc == 0 and "OK" in out, f"EV v1 with -crl_check: {out}"


def test_byzantine_signer_is_jailed_and_certificates_still_sign(tn: Net, tmp_path: Path) -> None:
    net = tn
    byz = 3
    _set(net.home(byz), test_byzantine="bad_shares")
    addr, pubkey = net.vals[byz].address.hex(), net.vals[byz].public_key.hex()
    net.start_all()
    root = tmp_path / "root.pem"
    net.export_root(0, root)
    certs = [
        Issued("DV", f"dv{n}.example.test", ed25519.Ed25519PrivateKey.generate(), net.accounts[n])
        for n in range(3)
    ]
    issue(net, certs, attestors=[0, 1, 2])
    for n, c in enumerate(certs):
        leaf, _ = export_cert(net, n % 3, c, tmp_path, tag=str(n))
        rc, out = openssl_verify(root, leaf)
        assert rc == 0 and "OK" in out, f"{c.domain}: {out}"

    def bad_share_events() -> list[dict[str, Any]]:
        return tss_bad_share_events(net, 0, addr)

    events = wait_for(bad_share_events, STEP_S, "a tss_bad_share event naming node3")
    assert "test_faults_on" in net.log_text(byz), "the node must say it misbehaves on purpose"
    jailed_at = min(e["height"] for e in events)
    # Jailed in that block: out of the set from two heights on (SPEC §8.2).
    net.wait_height([0, 1, 2], jailed_at + 4, timeout_s=STEP_S)
    seated = {v["pubkey"] for v in net.rpc(0, "validators_at", {"height": jailed_at})["validators"]}
    assert pubkey in seated
    for h in (jailed_at + 2, jailed_at + 4):
        seated = {v["pubkey"] for v in net.rpc(0, "validators_at", {"height": h})["validators"]}
        assert pubkey not in seated, f"the bad signer still votes at height {h}"
        assert len(seated) == 3
    listed = net.rpc(0, "validators_list")["validators"]
    assert all(v["address"] != addr or v["power"] == 0 for v in listed), listed
    # The chain goes on, and the honest three still sign a new certificate.
    late = Issued("DV", "late.example.test", ed25519.Ed25519PrivateKey.generate(), net.accounts[3])
    issue(net, [late], attestors=[0, 1, 2])
    leaf, _ = export_cert(net, 1, late, tmp_path, tag="late")
    rc, out = openssl_verify(root, leaf)
    assert rc == 0 and "OK" in out, f"after jailing: {out}"


def test_replacing_a_validator_keeps_the_root(tmp_path: Path) -> None:
    net = Net(tmp_path / "tn", validators=5)
    try:
        _replacing_a_validator(net, tmp_path)
    finally:
        net.close()


def _only_first_validators(net: Net, n: int) -> None:
    """Rewrite every genesis.json so that only the first ``n`` keys validate;
    the others' homes stay full nodes (their accounts keep their balances)."""
    g = genesis_from_json((net.root / "genesis.json").read_text())
    assert [v.pubkey for v in g.validators] == [k.public_key for k in net.vals]
    g = msgspec.structs.replace(g, validators=g.validators[:n])
    text = genesis_to_json(g)
    (net.root / "genesis.json").write_text(text)
    for i in range(net.n):
        (net.home(i) / "genesis.json").write_text(text)


def _replacing_a_validator(net: Net, tmp_path: Path) -> None:
    new, old = 4, 3
    _only_first_validators(net, 4)
    net.start_all()
    root_before = net.export_root(0, tmp_path / "root.pem")
    first = net.rpc(0, "tss_status")["key"]
    assert first is not None and first["epoch"] == 1
    assert {m["address"] for m in first["members"]} == {k.address.hex() for k in net.vals[:4]}

    # Governance: seat node4, retire node3. Every sitting validator says yes,
    # so each passes however the two changes fall across heights.
    pids = []
    for pubkey, power in ((net.vals[new].public_key, 10), (net.vals[old].public_key, 0)):
        got = net.run(0, net.vals[0], GovPropose(SetValidator(pubkey, power), "replace node3"))
        pids.append(sha256(GOV_TAG + bytes.fromhex(got["hash"])))
    votes = [(i, net.vals[i], GovVote(pid, True)) for pid in pids for i in (1, 2, 3)]
    passed: set[str] = set()
    for node, h in [(node, net.send(node, key, body)) for node, key, body in votes]:
        got = net.receipt(node, h)
        # A vote that comes after the proposal passed (or from node3 once it is
        # out) is refused, and harmless.
        assert got["code"] == 0 or got["code_name"] in ("PROPOSAL_CLOSED", "NOT_VALIDATOR"), got
        passed |= {e["ref"] for e in got["receipt"]["events"] if e["kind"] == "gov_passed"}
    assert passed == {pid.hex() for pid in pids}, "both SetValidator proposals pass"
    new_set = {net.vals[i].address.hex() for i in (0, 1, 2, new)}

    def reshared() -> dict[str, Any] | None:
        st: dict[str, Any] = net.rpc(0, "tss_status")
        key, rnd = st["key"], st["round"]
        if key is None or key["epoch"] < 2 or rnd is None:
            return None
        members = {m["address"] for m in key["members"]}
        done = rnd["kind"] == "reshare" and rnd["phase"] == "done"
        return st if members == new_set and done else None

    st = wait_for(reshared, STEP_S, "the key to be re-shared to the new validator set")
    assert st["key"]["group_pk"] == first["group_pk"], "re-sharing changed the group key"
    seated = {v["address"] for v in net.rpc(0, "validators_list")["validators"] if v["power"] > 0}
    assert seated == new_set

    net.stop(old)
    c = Issued("DV", "after.example.test", ed25519.Ed25519PrivateKey.generate(), net.accounts[0])
    issue(net, [c], attestors=[0, 1, new])
    leaf, _ = export_cert(net, new, c, tmp_path)
    rc, out = openssl_verify(tmp_path / "root.pem", leaf)
    assert rc == 0 and "OK" in out, f"new set's certificate against the old root.pem: {out}"
    assert net.export_root(new, tmp_path / "root-again.pem") == root_before
    assert net.export_root(1, tmp_path / "root-again1.pem") == root_before
