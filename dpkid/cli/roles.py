"""The `dpkid` commands for every user role, talking to a running node's JSON-RPC socket.

  account   new | show | transfer                        (any account holder)
  cert      apply | status | show | list | renew | revoke (certificate applicants and owners)
  endorse   list-pending | approve | reject | withdraw | revoke  (registered endorsers)
  validators, status                                      (anyone)

Output is for people by default and one JSON document with ``--json``. Errors
and exit status are those of every command (dpkid/cli/common.py): 0 success,
1 the node refused or the thing asked about is not valid (also: a wait that
ended without success), 2 usage, local file or connection error, 3 a wait
that timed out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dpkid.cli.common import (
    EXIT_HELP,
    NOT_FOUND,
    Exit,
    Refused,
    UsageError,
    WaitTimeout,
    add_command,
    add_json,
    add_node_args,
    hidden_alias,
    home_dir,
    load_genesis,
    node_client,
    read_bytes,
    read_json_file,
    read_signing_key,
    write_file,
)
from dpkid.client.rpc import (
    ClientTimeout,
    RpcClientError,
    SyncClient,
    app_id_for_tx,
    build_and_submit,
)
from dpkid.core.crypto import SigningKey
from dpkid.core.domains import DomainError, normalize_domain, validate_domain_list
from dpkid.core.types import (
    MAX_DOMAINS_PER_CERT,
    AuthzRequest,
    CertApply,
    CertRenew,
    Endorse,
    EndorserRevoke,
    EndorseWithdraw,
    OrgIdentity,
    Policy,
    Revoke,
    Transfer,
    TxBody,
    revoke_sign_bytes,
)
from dpkid.daemon.config import GENESIS_FILE, write_key

DEFAULT_TIMEOUT_S: Final = 120.0
DEFAULT_SCAN_BLOCKS: Final = 200
# Allowed RFC 5280 reasons (dpkid.core.state.machine.ALLOWED_REASONS / REASON_NAMES).
REASONS: Final = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
}


class TxFailed(Refused):
    """A committed transaction whose receipt is not OK."""

    def __init__(self, res: dict[str, Any]) -> None:
        super().__init__(
            f"transaction {res['hash']} failed at height {res['height']}: "
            f"{res['code_name']}: {res['log']}"
        )
        self.result = res


# ====================================================================== context


@dataclass
class Ctx:
    args: argparse.Namespace
    _client: SyncClient | None = None
    _policy: Policy | None = None
    _policy_loaded: bool = False

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def home(self) -> Path | None:
        return home_dir(self.args)

    def client(self) -> SyncClient:
        if self._client is None:
            self._client = node_client(self.args)
        return self._client

    def policy(self) -> Policy | None:
        """The chain's policy from HOME/genesis.json, when a node home is known."""
        if not self._policy_loaded:
            self._policy_loaded = True
            home = self.home()
            if home is not None and (home / GENESIS_FILE).exists():
                self._policy = load_genesis(home / GENESIS_FILE).policy
        return self._policy

    def fee(self) -> int:
        f = getattr(self.args, "fee", None)
        if f is not None:
            return int(f)
        p = self.policy()
        return p.min_tx_fee if p else Policy().min_tx_fee

    def timeout(self) -> float:
        return float(getattr(self.args, "timeout", None) or DEFAULT_TIMEOUT_S)

    def say(self, line: str = "") -> None:
        """A human line; suppressed in --json mode."""
        if not self.json:
            print(line, flush=True)

    def emit(self, obj: Any, lines: Sequence[str]) -> None:
        if self.json:
            print(json.dumps(obj, indent=2, sort_keys=True))
        else:
            for line in lines:
                print(line)

    # ------------------------------------------------------------------ tx helpers
    def send(self, key: SigningKey, body: TxBody) -> str:
        return build_and_submit(self.client(), key, body, self.fee())

    def commit(self, tx_hash: str) -> dict[str, Any]:
        """Wait for the tx to be committed; raise TxFailed on a failed receipt."""
        res = self.client().wait_tx(tx_hash, timeout_s=self.timeout())
        if res["code"] != 0:
            raise TxFailed(res)
        return res


# ====================================================================== input helpers


def _read_account_key(path: str, flag: str = "--account-key") -> SigningKey:
    return read_signing_key(path, flag)


def _hex_id(text: str, length: int, what: str) -> str:
    t = text.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raise UsageError(f"{what} must be hex, got {text[:80]!r}") from None
    if len(raw) != length:
        raise UsageError(f"{what} must be {2 * length} hex digits, got {len(t)}")
    return raw.hex()


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return v


def _normalize_domains(names: Sequence[str], max_names: int) -> list[str]:
    out: list[str] = []
    for n in names:
        try:
            d = normalize_domain(n.strip())
        except DomainError as exc:
            raise UsageError(f"bad domain {n[:80]!r}: {exc}") from None
        if d not in out:
            out.append(d)
    try:
        return validate_domain_list(out, max_names)
    except DomainError as exc:
        raise UsageError(f"domains: {exc}") from None


@dataclass
class SubjectInput:
    spki: bytes
    csr_domains: list[str]
    csr_org: dict[str, str]


def _vet_spki(spki: bytes, path: str) -> bytes:
    from dpkid.core.keys import SubjectKeyError, parse_spki

    try:
        parse_spki(spki)
    except SubjectKeyError as exc:
        raise UsageError(f"{path}: subject key not accepted: {exc}") from None
    return spki


def _not_a_dpkid_key(path: str, data: bytes) -> None:
    """A dpkid key file (JSON) where a certificate's key (PEM/DER) belongs: say so."""
    if data.lstrip().startswith(b"{") and b'"seed"' in data:
        raise UsageError(
            f"{path} is a dpkid key file (an account or endorser key); a certificate's key "
            "is a PEM or DER private key (give the dpkid key as --account-key)"
        )


def _load_private_key(path: str) -> Any:
    """A PEM or DER private key (unencrypted); None if the file holds no private key."""
    from cryptography.hazmat.primitives.serialization import (
        load_der_private_key,
        load_pem_private_key,
    )

    data = read_bytes(path, "key file")
    _not_a_dpkid_key(path, data)
    loader = load_pem_private_key if b"-----BEGIN" in data else load_der_private_key
    try:
        return loader(data, password=None)
    except TypeError:
        raise UsageError(
            f"{path} is an encrypted private key; give an unencrypted key, its public key or a CSR"
        ) from None
    except Exception:  # not a private key (or one cryptography cannot read)
        return None


def _load_subject(path: str) -> SubjectInput:
    """The subject public key of a PEM/DER private key, public key, or CSR."""
    from cryptography.hazmat.primitives.serialization import (
        load_der_public_key,
        load_pem_public_key,
    )

    from dpkid.core.keys import spki_der_of

    data = read_bytes(path, "key file")
    _not_a_dpkid_key(path, data)
    if b"CERTIFICATE REQUEST" in data:
        return _load_csr(path)
    priv = _load_private_key(path)
    if priv is not None:
        return SubjectInput(_vet_spki(spki_der_of(priv), path), [], {})
    loader = load_pem_public_key if b"-----BEGIN" in data else load_der_public_key
    try:
        pub = loader(data)
    except Exception:
        raise UsageError(f"{path} holds no readable private or public key") from None
    return SubjectInput(_vet_spki(spki_der_of(pub), path), [], {})


def _load_csr(path: str) -> SubjectInput:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from dpkid.core.keys import spki_der_of

    data = read_bytes(path, "CSR")
    _not_a_dpkid_key(path, data)
    try:
        csr = (
            x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
        )
    except ValueError:
        raise UsageError(f"{path} is not a certificate signing request (PEM or DER)") from None
    try:
        ok = csr.is_signature_valid
        pub = csr.public_key()
    except Exception as exc:
        raise UsageError(f"{path}: CSR key is not supported: {exc}") from None
    if not ok:
        raise UsageError(f"{path}: the CSR's signature does not verify")
    names: list[str] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    except ValueError as exc:
        raise UsageError(f"{path}: bad CSR extensions: {exc}") from None
    org: dict[str, str] = {}
    for key, oid in (
        ("name", NameOID.ORGANIZATION_NAME),
        ("country", NameOID.COUNTRY_NAME),
        ("state", NameOID.STATE_OR_PROVINCE_NAME),
        ("locality", NameOID.LOCALITY_NAME),
    ):
        attrs = csr.subject.get_attributes_for_oid(oid)
        if attrs:
            v = attrs[0].value
            org[key] = v.decode() if isinstance(v, bytes) else str(v)
    return SubjectInput(_vet_spki(spki_der_of(pub), path), names, org)


def _build_org(
    args: argparse.Namespace, cert_type: str, csr_org: dict[str, str]
) -> OrgIdentity | None:
    given = {
        "name": args.org_name,
        "country": args.org_country,
        "state": args.org_state,
        "locality": args.org_locality,
        "registration_id": args.org_registration_id,
        "jurisdiction": args.org_jurisdiction,
    }
    if cert_type == "DV":
        if any(v is not None for v in given.values()):
            raise UsageError("a DV certificate names no organization: drop the --org-* options")
        return None
    vals = {k: (v if v is not None else csr_org.get(k, "")) for k, v in given.items()}
    vals = {k: v.strip() for k, v in vals.items()}
    if not vals["name"]:
        raise UsageError(f"an {cert_type} application needs --org-name")
    country = vals["country"].upper()
    if len(country) != 2 or not country.isascii() or not country.isalpha():
        raise UsageError(
            f"an {cert_type} application needs --org-country as two letters (ISO 3166)"
        )
    if cert_type == "EV" and (not vals["registration_id"] or not vals["jurisdiction"]):
        raise UsageError("an EV application needs --org-registration-id and --org-jurisdiction")
    for k, v in vals.items():
        if len(v) > 128:
            raise UsageError(f"--org-{k.replace('_', '-')} is longer than 128 characters")
    return OrgIdentity(
        name=vals["name"],
        country=country,
        state=vals["state"],
        locality=vals["locality"],
        registration_id=vals["registration_id"],
        jurisdiction=vals["jurisdiction"],
    )


def _fee_for(policy: Policy, cert_type: str) -> int:
    return {"DV": policy.fee_dv, "OV": policy.fee_ov, "EV": policy.fee_ev}[cert_type]


def _k_for(policy: Policy, cert_type: str) -> int:
    return {"DV": 0, "OV": policy.k_ov, "EV": policy.k_ev}[cert_type]


def _escrow(ctx: Ctx, cert_type: str) -> int:
    if ctx.args.escrow is not None:
        return int(ctx.args.escrow)
    p = ctx.policy()
    if p is None:
        home = ctx.home()
        where = f"{home / GENESIS_FILE} does not exist" if home else "no --home was given"
        raise UsageError(
            f"give --escrow: its default, the chain policy's {cert_type} fee, is read from "
            f"HOME/{GENESIS_FILE}, and {where}"
        )
    return _fee_for(p, cert_type)


def _days(ctx: Ctx) -> int:
    if ctx.args.days is not None:
        return int(ctx.args.days)
    p = ctx.policy()
    return p.max_validity_days if p else Policy().max_validity_days


# ====================================================================== formatting


def _when(ms: int) -> str:
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> list[str]:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _kv(pairs: Sequence[tuple[str, object]]) -> list[str]:
    w = max((len(k) for k, _ in pairs), default=0)
    return [f"{k.ljust(w)}  {v}" for k, v in pairs]


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    if isinstance(obj, dict):
        if not obj and prefix:
            out.append((prefix, "{}"))
        for k, v in obj.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        if not obj:
            out.append((prefix, "[]"))
        elif all(not isinstance(x, (dict, list)) for x in obj):
            out.append((prefix, ", ".join(str(x) for x in obj)))
        else:
            for i, v in enumerate(obj):
                out.extend(_flatten(v, f"{prefix}[{i}]"))
    else:
        out.append((prefix, "-" if obj is None else obj))
    return out


def _app_progress(app: dict[str, Any], powers: dict[str, int], k: int | None) -> str:
    atts = app.get("attestations", [])
    ok = [a for a in atts if a["ok"]]
    total = sum(powers.values())
    ok_power = sum(powers.get(a["validator"], 0) for a in ok)
    parts = [f"{app['status']}"]
    pw = f", ok power {ok_power}/{total}" if total else ""
    parts.append(f"attestations {len(atts)} ({len(ok)} ok, {len(atts) - len(ok)} failed{pw})")
    if app["cert_type"] != "DV":
        ends = app.get("endorsements", [])
        yes = len([e for e in ends if e["approve"]])
        need = f" of {k} needed" if k else ""
        parts.append(f"endorsements {yes} approve{need}, {len(ends) - yes} reject")
    if app["status"] == "issued" and app.get("cert_id"):
        parts.append(f"certificate {app['cert_id']}")
    if app.get("close_reason"):
        parts.append(f"reason: {app['close_reason']}")
    return "; ".join(parts)


def _check_lines(app: dict[str, Any]) -> list[str]:
    """Each validator's word on the application, failures with their reason:
    the applicant sees why, not only that it is still pending."""
    out = []
    for a in app.get("attestations", []):
        what = f"ok ({a['method']})" if a["ok"] else f"FAILED: {a['reason'] or 'no reason given'}"
        out.append(f"    validator {a['validator'][:12]}: {what} (height {a['height']})")
    return out


def _challenge_lines(app: dict[str, Any], policy: Policy | None) -> list[str]:
    ch = app["challenge"]
    http = list(ch.get("http", []))
    dns = list(ch.get("dns", []))
    expires = f", expires {_when(int(app['expires_ms']))}" if app.get("expires_ms") else ""
    out = [
        f"application {app['app_id']}",
        f"  type {app['cert_type']}, status {app['status']}, escrow {app['escrow']}, "
        f"{app['validity_days']} days{expires}",
    ]
    if app.get("org"):
        org = app["org"]
        extra = ", ".join(
            f"{k} {org[k]}"
            for k in ("state", "locality", "registration_id", "jurisdiction")
            if org.get(k)
        )
        out.append(
            f"  organization {org['name']} ({org['country']}{', ' + extra if extra else ''})"
        )
    out += [
        "",
        "Prove control of every name: publish ONE of these for each name (validators check",
        "them on their own, as soon as the application is on chain; nothing else to submit):",
    ]
    for i, d in enumerate(app["domains"]):
        out.append(f"  {d}")
        if not d.startswith("*."):
            url = http.pop(0) if http else ""
            out.append(f"    http-01  serve URL  {url}")
            out.append(f"             body       {ch['http_body']}")
        txt = dns[i] if i < len(dns) else {"name": "?", "value": "?"}
        note = "  (a wildcard needs dns-01)" if d.startswith("*.") else ""
        out.append(f'    dns-01   TXT record {txt["name"]}  "{txt["value"]}"{note}')
    if app["cert_type"] != "DV":
        k = _k_for(policy, app["cert_type"]) if policy else None
        who = f"{k} registered endorsers" if k else "the policy's number of registered endorsers"
        out.append("")
        out.append(
            f"{app['cert_type']}: the organization claims also need approval by {who} "
            f"(dpkid endorse approve {app['app_id']})."
        )
    out.append("")
    if app["status"] == "prepared":
        out.append("Publish these first, then submit: dpkid cert submit PREPARED.json [--wait]")
    else:
        out.append(f"follow progress: dpkid cert status {app['app_id']}")
    return out


# ====================================================================== account


def cmd_account_new(ctx: Ctx) -> int:
    out = Path(ctx.args.out)
    if out.exists() and not ctx.args.force:
        raise UsageError(f"{out} exists; use --force to overwrite it")
    key = SigningKey(secrets.token_bytes(32))
    try:
        write_key(out, key, role="account")
    except OSError as exc:
        raise UsageError(f"cannot write key file {out}: {exc.strerror or exc}") from None
    ctx.emit(
        {"address": key.address.hex(), "public_key": key.public_key.hex(), "key_file": str(out)},
        _kv(
            [
                ("address", key.address.hex()),
                ("public key", key.public_key.hex()),
                ("key file", f"{out} (mode 0600: keep it secret)"),
            ]
        ),
    )
    return Exit.OK


def cmd_account_show(ctx: Ctx) -> int:
    a = ctx.args
    if bool(a.address) == bool(a.account_key):
        raise UsageError("give an ADDRESS or --account-key ACCOUNT.json (one of them)")
    addr = (
        _read_account_key(a.account_key).address.hex()
        if a.account_key
        else _hex_id(a.address, 20, "address")
    )
    acct = ctx.client().account(addr)
    lines = _kv(
        [
            ("address", acct["address"]),
            ("balance", acct["balance"]),
            ("nonce", f"{acct['nonce']} (next {acct['next_nonce']})"),
            ("public key", acct["pubkey"] or "(not on chain yet: the account has not sent a tx)"),
            ("at height", acct["height"]),
        ]
    )
    if not acct["exists"]:
        lines.append("(no record on chain: nothing was ever sent to or from this address)")
    ctx.emit(acct, lines)
    return Exit.OK


def cmd_account_transfer(ctx: Ctx) -> int:
    a = ctx.args
    key = _read_account_key(a.account_key)
    to = _hex_id(a.to, 20, "--to address")
    # Refuse what the ledger would refuse, before anything is signed or sent (a
    # transfer the balance cannot cover still costs its fee once committed).
    fee = ctx.fee()
    acct = ctx.client().account(key.address)
    need = int(a.amount) + fee
    if int(acct["balance"]) < need:
        raise Refused(
            f"account {key.address.hex()} has {acct['balance']}, too little to send "
            f"{a.amount} with fee {fee} ({need} needed); nothing was sent",
            {"balance": int(acct["balance"]), "needed": need},
        )
    h = ctx.send(key, Transfer(bytes.fromhex(to), a.amount))
    out: dict[str, Any] = {
        "tx_hash": h,
        "from": key.address.hex(),
        "to": to,
        "amount": a.amount,
        "committed": False,
    }
    if not a.wait:
        ctx.emit(out, [f"submitted transfer of {a.amount} to {to}: tx {h} (not waiting for it)"])
        return Exit.OK
    res = ctx.commit(h)
    bal = ctx.client().account(key.address)["balance"]
    out.update(committed=True, height=res["height"], code_name=res["code_name"], balance=bal)
    ctx.emit(
        out,
        [f"transferred {a.amount} to {to} at height {res['height']} (tx {h}); balance now {bal}"],
    )
    return Exit.OK


# ====================================================================== cert


def _follow(ctx: Ctx, app_id: str, cert_type: str) -> dict[str, Any]:
    """Show progress until the application closes or --timeout; return the last view."""
    c = ctx.client()
    vals = c.validators()
    powers = {v["address"]: int(v["power"]) for v in vals["validators"]}
    p = ctx.policy()
    k = _k_for(p, cert_type) if p else None
    last: list[str] = [""]
    view: dict[str, Any] = {}
    shown_failures: set[str] = set()

    def show(app: dict[str, Any]) -> None:
        view.clear()
        view.update(app)
        line = _app_progress(app, powers, k)
        if line != last[0]:
            last[0] = line
            ctx.say(f"  {line}")
            for fail in _check_lines(app):
                if "FAILED" in fail and fail not in shown_failures:
                    shown_failures.add(fail)
                    ctx.say(fail)

    ctx.say(f"waiting up to {ctx.timeout():g} s for application {app_id} ...")
    try:
        return c.wait_application(app_id, timeout_s=ctx.timeout(), on_update=show)
    except ClientTimeout:
        raise WaitTimeout(
            f"timed out after {ctx.timeout():g} s; application {app_id} is still "
            f"{view.get('status', 'pending')} (check later: dpkid cert status {app_id})",
            {"app_id": app_id, "status": "timeout", "application": view},
        ) from None


def _report_application(ctx: Ctx, tx_hash: str, res: dict[str, Any], what: str) -> int:
    app_id = app_id_for_tx(tx_hash)
    c = ctx.client()
    app = c.application(app_id)
    out: dict[str, Any] = {
        "tx_hash": tx_hash,
        "height": res["height"],
        "app_id": app_id,
        "application": app,
        "challenge": app["challenge"],
    }
    if not ctx.json:
        ctx.say(f"{what} committed at height {res['height']} (tx {tx_hash})")
        for line in _challenge_lines(app, ctx.policy()):
            ctx.say(line)
    if not ctx.args.wait:
        if ctx.json:
            ctx.emit(out, [])
        return Exit.OK
    ctx.say("")
    final = _follow(ctx, app_id, app["cert_type"])
    out["application"] = final
    out["status"] = final["status"]
    if final["status"] == "issued":
        out["cert_id"] = final["cert_id"]
        out["certificate"] = c.cert(final["cert_id"])
        ctx.emit(out, [f"issued: certificate {final['cert_id']}"])
        return Exit.OK
    raise Refused(
        f"application {app_id} {final['status']}"
        + (f": {final['close_reason']}" if final.get("close_reason") else ""),
        out,
    )


def _hex32(s: str, flag: str) -> bytes:
    try:
        b = bytes.fromhex(s)
    except ValueError:
        b = b""
    if len(b) != 32:
        raise UsageError(f"{flag} takes a 64-hex-digit id, not {s!r}")
    return b


def cmd_cert_apply(ctx: Ctx) -> int:
    a = ctx.args
    cert_type = a.type.upper()
    if bool(a.cert_key) == bool(a.csr):
        raise UsageError(
            "give the certificate's key as --cert-key KEY.pem or --csr CSR.pem (one of them)"
        )
    subject = _load_subject(a.cert_key) if a.cert_key else _load_csr(a.csr)
    p = ctx.policy()
    max_names = p.max_domains if p else MAX_DOMAINS_PER_CERT
    names = list(a.domain or [])
    if not names:
        if not subject.csr_domains:
            raise UsageError("give at least one --domain (or a CSR with DNS subjectAltNames)")
        names = subject.csr_domains
    domains = _normalize_domains(names, max_names)
    org = _build_org(a, cert_type, subject.csr_org)
    escrow = _escrow(ctx, cert_type)
    days = _days(ctx)
    key = _read_account_key(a.account_key)
    body = CertApply(
        cert_type=cert_type,
        domains=domains,
        spki=subject.spki,
        validity_days=days,
        escrow=escrow,
        org=org,
        authzs=[_hex32(x, "--authz") for x in (a.authz or [])],
    )
    if a.prepare:
        if a.wait:
            raise UsageError("--prepare only signs: use --wait with `dpkid cert submit`")
        return _prepare(ctx, key, body, cert_type, domains, org)
    h = ctx.send(key, body)
    ctx.say(f"submitted {cert_type} application for {', '.join(domains)}: tx {h}")
    res = ctx.commit(h)
    return _report_application(ctx, h, res, "application")


PREPARED_KIND: Final = "dpkid-prepared-application/v1"


def _prepare(
    ctx: Ctx,
    key: SigningKey,
    body: CertApply | CertRenew,
    cert_type: str,
    domains: list[str],
    org: dict[str, Any] | OrgIdentity | None,
) -> int:
    """Sign the application now, print its challenge, and save it for `cert submit`.

    The challenge follows from the application id, which is a hash of the
    signed transaction: so it is known before submission, and the names can be
    made to answer before any validator looks.
    """
    from dpkid.client.rpc import encode_signed_tx
    from dpkid.core.challenges import Challenge, dns_txt_value, key_authorization, token_for
    from dpkid.core.crypto import sha256
    from dpkid.core.jsonview import to_json

    c = ctx.client()
    chain_id = c.chain_id()
    nonce = int(c.account(key.address)["next_nonce"])
    raw = encode_signed_tx(key, chain_id, nonce, ctx.fee(), body)
    tx_hash = sha256(raw).hex()
    app_id = app_id_for_tx(tx_hash)
    token = token_for(bytes.fromhex(app_id), key.public_key)
    ka = key_authorization(token, key.public_key)
    challenge = Challenge(token, ka, dns_txt_value(ka), tuple(domains)).as_json()
    doc: dict[str, Any] = {
        "kind": PREPARED_KIND,
        "chain_id": chain_id,
        "account": key.address.hex(),
        "nonce": nonce,
        "tx": raw.hex(),
        "tx_hash": tx_hash,
        "app_id": app_id,
        "cert_type": cert_type,
        "domains": domains,
        "org": to_json(org) if org is not None else None,
        "escrow": body.escrow,
        "validity_days": body.validity_days,
        "challenge": challenge,
    }
    out = Path(ctx.args.prepare)
    write_file(out, json.dumps(doc, indent=2) + "\n")
    view = {**doc, "status": "prepared"}
    ctx.emit(
        {**doc, "file": str(out)},
        [
            f"signed, NOT submitted: saved to {out} (nonce {nonce}: send no other transaction "
            "from this account before submitting it)",
            *_challenge_lines(view, ctx.policy()),
        ],
    )
    return Exit.OK


def cmd_cert_submit(ctx: Ctx) -> int:
    path = ctx.args.file
    doc = read_json_file(Path(path), "prepared application")
    if not isinstance(doc, dict) or doc.get("kind") != PREPARED_KIND:
        raise UsageError(
            f"{path} is not a prepared application (write one with dpkid cert apply --prepare)"
        )
    try:
        raw = bytes.fromhex(doc["tx"])
        app_id = str(doc["app_id"])
    except KeyError as exc:
        raise UsageError(f"prepared application {path} has no {exc}") from None
    except (ValueError, TypeError):
        raise UsageError(f'prepared application {path}: "tx" is not hex') from None
    from dpkid.core.crypto import sha256

    tx_hash = sha256(raw).hex()
    if app_id_for_tx(tx_hash) != app_id:
        raise UsageError(f"{path}: the app_id does not match the signed transaction")
    chain_id = ctx.client().chain_id()
    if doc.get("chain_id") != chain_id:
        raise Refused(f"{path} was prepared for chain {doc.get('chain_id')!r}, not {chain_id!r}")
    try:
        h = ctx.client().submit(raw)
    except RpcClientError as exc:
        data = exc.data if isinstance(exc.data, dict) else {}
        if data.get("name") == "BAD_NONCE":
            raise Refused(
                f"{path} is stale ({exc.message}): the account sent another transaction since;"
                " prepare it again"
            ) from None
        raise
    ctx.say(f"submitted prepared application {app_id}: tx {h}")
    res = ctx.commit(h)
    return _report_application(ctx, h, res, "application")


def _find_record(ctx: Ctx, ident: str) -> tuple[str, dict[str, Any]]:
    """A certificate, an application or an authorization, by its id."""
    rid = _hex_id(ident, 32, "certificate, application or authorization id")
    c = ctx.client()
    try:
        return "certificate", c.cert(rid)
    except RpcClientError as exc:
        if exc.code != NOT_FOUND:
            raise
    try:
        return "application", c.application(rid)
    except RpcClientError as exc:
        if exc.code != NOT_FOUND:
            raise
    # An ACME client sees only authorizations when a domain check fails; the
    # ACME server names the ledger one (dpkidAuthorization), shown here too.
    try:
        return "authorization", _authz(ctx, rid)
    except RpcClientError as exc:
        if exc.code != NOT_FOUND:
            raise
    raise Refused(f"no certificate, application or authorization with id {rid}")


def _cert_summary(cert: dict[str, Any]) -> list[str]:
    typ = cert["cert_type"]
    if cert["issued_type"] != typ:
        typ += f" (issued as {cert['issued_type']}, degraded)"
    lines = [
        f"certificate {cert['cert_id']}: {cert['status_at_head']}",
        *_kv(
            [
                ("  type", typ),
                ("  domains", ", ".join(cert["domains"])),
                ("  valid", f"{_when(cert['not_before_ms'])} .. {_when(cert['not_after_ms'])}"),
                ("  owner", cert["owner"]),
                ("  endorsers", len(cert["endorsers"])),
                ("  log index", cert["log_index"]),
            ]
        ),
    ]
    if cert["org"]:
        lines.append(f"    organization  {cert['org']['name']} ({cert['org']['country']})")
    if cert["status"] == "revoked":
        lines.append(
            f"    revoked       {_when(cert['revoked_ms'])} at height {cert['revoked_height']}"
            f" ({cert.get('revocation_reason_name', cert['revocation_reason'])})"
        )
    if cert.get("superseded_by"):
        lines.append(f"    superseded by {cert['superseded_by']}")
    return lines


def cmd_cert_status(ctx: Ctx) -> int:
    kind, rec = _find_record(ctx, ctx.args.id)
    if kind == "certificate":
        status = rec["status_at_head"]
        lines = _cert_summary(rec)
        good = status == "valid"
    elif kind == "authorization":
        status = rec["status_at_head"]
        lines = _authz_lines(rec)
        good = status in ("pending", "valid")
    else:
        status = rec["status"]
        p = ctx.policy()
        powers = {v["address"]: int(v["power"]) for v in ctx.client().validators()["validators"]}
        lines = [
            f"application {rec['app_id']} ({rec['cert_type']}, {', '.join(rec['domains'])})",
            f"  {_app_progress(rec, powers, _k_for(p, rec['cert_type']) if p else None)}",
            *_check_lines(rec),
        ]
        good = status in ("pending", "issued")
    ctx.emit({"kind": kind, "status": status, "record": rec}, lines)
    return Exit.OK if good else Exit.NO


def cmd_cert_show(ctx: Ctx) -> int:
    kind, rec = _find_record(ctx, ctx.args.id)
    ctx.emit({"kind": kind, "record": rec}, [kind, *_kv(_flatten(rec))])
    return Exit.OK


def cmd_cert_list(ctx: Ctx) -> int:
    dom = _normalize_domains([ctx.args.domain], 1)[0]
    certs = ctx.client().certs_by_domain(dom)
    rows = [
        (
            c["cert_id"],
            c["cert_type"],
            c["status_at_head"],
            _when(c["not_after_ms"]),
            ",".join(c["domains"]),
        )
        for c in certs
    ]
    lines = (
        _table(rows, ["certificate", "type", "status", "not after", "domains"])
        if rows
        else [f"no certificates for {dom}"]
    )
    ctx.emit({"domain": dom, "certificates": certs}, lines)
    return Exit.OK


def _live_cert(ctx: Ctx, ident: str) -> dict[str, Any]:
    cid = _hex_id(ident, 32, "certificate id")
    try:
        cert = ctx.client().cert(cid)
    except RpcClientError as exc:
        if exc.code == NOT_FOUND:
            raise Refused(f"no such certificate: {cid}") from None
        raise
    if cert["status"] == "revoked":
        raise Refused(f"certificate {cid} is already revoked")
    return cert


def cmd_cert_revoke(ctx: Ctx) -> int:
    from dpkid.core.keys import SubjectKeyError, sign_with_private_key, spki_der_of

    a = ctx.args
    cert = _live_cert(ctx, a.id)
    code = REASONS[a.reason]
    payer = _read_account_key(a.account_key)
    key_sig = b""
    if a.cert_key:
        priv = _load_private_key(a.cert_key)
        if priv is None:
            raise UsageError(f"{a.cert_key} holds no readable private key")
        if spki_der_of(priv).hex() != cert["spki"]:
            raise Refused(
                f"the key in {a.cert_key} is not the key of certificate {cert['cert_id']}"
            )
        msg = revoke_sign_bytes(ctx.client().chain_id(), bytes.fromhex(cert["cert_id"]), code)
        try:
            key_sig = sign_with_private_key(priv, msg)
        except SubjectKeyError as exc:
            raise UsageError(f"{a.cert_key}: {exc}") from None
    elif payer.address.hex() != cert["owner"]:
        raise Refused(
            f"account {payer.address.hex()} does not own certificate {cert['cert_id']}; "
            "the holder of the certificate key can revoke with --cert-key KEY.pem"
        )
    h = ctx.send(payer, Revoke(bytes.fromhex(cert["cert_id"]), code, key_sig))
    res = ctx.commit(h)
    ctx.emit(
        {"tx_hash": h, "height": res["height"], "cert_id": cert["cert_id"], "reason": a.reason},
        [f"revoked certificate {cert['cert_id']} ({a.reason}) at height {res['height']} (tx {h})"],
    )
    return Exit.OK


def cmd_cert_renew(ctx: Ctx) -> int:
    a = ctx.args
    cert = _live_cert(ctx, a.id)
    key = _read_account_key(a.account_key)
    if key.address.hex() != cert["owner"]:
        raise Refused(f"account {key.address.hex()} does not own certificate {cert['cert_id']}")
    new_spki = _load_subject(a.new_cert_key).spki if a.new_cert_key else b""
    body = CertRenew(
        cert_id=bytes.fromhex(cert["cert_id"]),
        validity_days=_days(ctx),
        escrow=_escrow(ctx, cert["cert_type"]),
        new_spki=new_spki,
        authzs=[_hex32(x, "--authz") for x in (a.authz or [])],
    )
    if a.prepare:
        if a.wait:
            raise UsageError("--prepare only signs: use --wait with `dpkid cert submit`")
        return _prepare(ctx, key, body, cert["cert_type"], list(cert["domains"]), cert["org"])
    h = ctx.send(key, body)
    ctx.say(f"submitted renewal of {cert['cert_id']}: tx {h}")
    res = ctx.commit(h)
    return _report_application(ctx, h, res, "renewal application")


# ====================================================================== endorse


def _active_endorser(ctx: Ctx, key: SigningKey) -> dict[str, Any]:
    addr = key.address.hex()
    for e in ctx.client().endorsers():
        if e["address"] == addr:
            if not e["active"]:
                raise Refused(f"{addr} ({e['name']}) is no longer an active endorser")
            return e
    raise Refused(f"{addr} is not a registered endorser")


def _pending_apps(ctx: Ctx, blocks: int) -> Iterator[dict[str, Any]]:
    """Pending OV/EV applications created in the last ``blocks`` blocks, newest first."""
    from dpkid.core import codec
    from dpkid.core.crypto import sha256
    from dpkid.core.types import decode_tx

    c = ctx.client()
    head = int(c.status()["height"])
    seen: set[str] = set()
    for h in range(head, max(0, head - blocks), -1):
        try:
            blk = c.block(h)
        except RpcClientError as exc:
            if exc.code == NOT_FOUND:
                continue
            raise
        for raw_hex in blk["txs"]:
            raw = bytes.fromhex(raw_hex)
            try:
                tx = decode_tx(raw)
            except codec.DecodeError:
                continue
            if not isinstance(tx.body, (CertApply, CertRenew)):
                continue
            app_id = app_id_for_tx(sha256(raw))
            if app_id in seen:
                continue
            seen.add(app_id)
            try:
                app = c.application(app_id)
            except RpcClientError as exc:
                if exc.code == NOT_FOUND:  # the tx failed: no application
                    continue
                raise
            if app["status"] == "pending" and app["cert_type"] != "DV":
                yield app


def cmd_endorse_list_pending(ctx: Ctx) -> int:
    key = _read_account_key(ctx.args.endorser_key, "--endorser-key")
    me = key.address.hex()
    _active_endorser(ctx, key)
    apps = [
        app
        for app in _pending_apps(ctx, ctx.args.blocks)
        if app["applicant"] != me and all(e["endorser"] != me for e in app["endorsements"])
    ]
    rows = []
    for app in apps:
        org = app.get("org") or {}
        yes = len([e for e in app["endorsements"] if e["approve"]])
        rows.append(
            (
                app["app_id"],
                app["cert_type"],
                f"{org.get('name', '')} ({org.get('country', '')})",
                ",".join(app["domains"]),
                f"{yes}/{len(app['endorsements'])}",
                app["created_height"],
            )
        )
    lines = (
        _table(rows, ["application", "type", "organization", "domains", "approvals", "height"])
        if rows
        else [f"no pending OV/EV applications for {me} in the last {ctx.args.blocks} blocks"]
    )
    ctx.emit({"endorser": me, "blocks_scanned": ctx.args.blocks, "applications": apps}, lines)
    return Exit.OK


def _endorse(ctx: Ctx, approve: bool) -> int:
    a = ctx.args
    key = _read_account_key(a.endorser_key, "--endorser-key")
    app_id = _hex_id(a.app_id, 32, "application id")
    c = ctx.client()
    try:
        app = c.application(app_id)
    except RpcClientError as exc:
        if exc.code == NOT_FOUND:
            raise Refused(f"no such application: {app_id}") from None
        raise
    _active_endorser(ctx, key)
    if app["cert_type"] == "DV":
        raise Refused(f"application {app_id} is DV: DV applications take no endorsements")
    if app["status"] != "pending":
        raise Refused(f"application {app_id} is {app['status']}, not pending")
    if any(e["endorser"] == key.address.hex() for e in app["endorsements"]):
        raise Refused(f"{key.address.hex()} has already decided on application {app_id}")
    h = ctx.send(key, Endorse(bytes.fromhex(app_id), approve, a.reason or ""))
    res = ctx.commit(h)
    app = c.application(app_id)
    verb = "approved" if approve else "rejected"
    ctx.emit(
        {"tx_hash": h, "height": res["height"], "app_id": app_id, "application": app},
        [
            f"{verb} application {app_id} at height {res['height']} (tx {h})",
            f"application is now {app['status']}"
            + (f": certificate {app['cert_id']}" if app["status"] == "issued" else ""),
        ],
    )
    return Exit.OK


def cmd_endorse_approve(ctx: Ctx) -> int:
    return _endorse(ctx, True)


def cmd_endorse_reject(ctx: Ctx) -> int:
    return _endorse(ctx, False)


def cmd_endorse_withdraw(ctx: Ctx) -> int:
    a = ctx.args
    key = _read_account_key(a.endorser_key, "--endorser-key")
    cert = _live_cert(ctx, a.cert_id)
    if key.address.hex() not in cert["endorsers"]:
        raise Refused(f"{key.address.hex()} does not endorse certificate {cert['cert_id']}")
    h = ctx.send(key, EndorseWithdraw(bytes.fromhex(cert["cert_id"]), a.reason or ""))
    res = ctx.commit(h)
    after = ctx.client().cert(cert["cert_id"])
    ctx.emit(
        {"tx_hash": h, "height": res["height"], "certificate": after},
        [
            f"withdrew endorsement of {cert['cert_id']} at height {res['height']} (tx {h})",
            f"certificate is now {after['cert_type']} with {len(after['endorsers'])} endorsers",
        ],
    )
    return Exit.OK


def cmd_endorse_revoke(ctx: Ctx) -> int:
    a = ctx.args
    key = _read_account_key(a.endorser_key, "--endorser-key")
    cert = _live_cert(ctx, a.cert_id)
    _active_endorser(ctx, key)
    h = ctx.send(key, EndorserRevoke(bytes.fromhex(cert["cert_id"]), REASONS[a.reason]))
    res = ctx.commit(h)
    after = ctx.client().cert(cert["cert_id"])
    state = (
        "revoked"
        if after["status"] == "revoked"
        else f"still valid ({len(after['revoke_votes'])} revocation votes)"
    )
    ctx.emit(
        {"tx_hash": h, "height": res["height"], "certificate": after},
        [f"voted to revoke {cert['cert_id']} at height {res['height']}; certificate {state}"],
    )
    return Exit.OK


# ====================================================================== chain


def cmd_validators(ctx: Ctx) -> int:
    res = ctx.client().validators()
    rows = [(v["address"], v["power"], v.get("name", ""), v["pubkey"]) for v in res["validators"]]
    lines = [
        *_table(rows, ["address", "power", "name", "public key"]),
        f"{len(rows)} validators, total power {res['total_power']}, at height {res['height']}",
    ]
    for ch in res.get("pending_changes", []):
        lines.append(
            f"pending: {ch['pubkey']} -> power {ch['power']} at height {ch['effective_height']}"
        )
    ctx.emit(res, lines)
    return Exit.OK


def cmd_status(ctx: Ctx) -> int:
    # The admin socket: the operator's status must get in when clients hold
    # every slot of the public socket.
    st = node_client(ctx.args, admin=True).status()
    pairs: list[tuple[str, object]] = [
        ("chain", st["chain_id"]),
        ("moniker", st.get("moniker", "")),
        ("height", st["height"]),
        ("block time", _when(int(st["time_ms"])) if st.get("time_ms") else "-"),
        ("block hash", st.get("block_hash") or "-"),
        ("app hash", st.get("app_hash") or "-"),
        ("validator", st.get("validator_address") or "no (full node)"),
        ("peers", st.get("peers", 0)),
        ("catching up", "yes" if st.get("catching_up") else "no"),
        ("mempool txs", st.get("mempool_txs", 0)),
        ("node id", st.get("node_id") or "-"),
    ]
    ctx.emit(st, _kv(pairs))
    return Exit.OK


# ====================================================================== parsers


def _connection(p: argparse.ArgumentParser) -> None:
    add_node_args(p)


def _key_arg(
    p: argparse.ArgumentParser,
    flag: str,
    metavar: str,
    help: str,
    required: bool = False,
    old: Sequence[str] = (),
) -> None:
    """A key file flag; the flag's name says which kind of file (see README)."""
    a = p.add_argument(flag, required=required, metavar=metavar, default=None, help=help)
    hidden_alias(p, a, *old)


def _account_key(
    p: argparse.ArgumentParser,
    help: str,
    required: bool = True,
    old: Sequence[str] = ("--account",),
) -> None:
    _key_arg(p, "--account-key", "ACCOUNT.json", help, required, old)


def _endorser_key(p: argparse.ArgumentParser) -> None:
    _key_arg(
        p,
        "--endorser-key",
        "ENDORSER.json",
        "the endorser's dpkid key file",
        required=True,
        old=("--key",),
    )


WAIT_ISSUED: Final = "then wait until issued, rejected or expired (exit 0 only if issued)"


def _tx_opts(p: argparse.ArgumentParser, wait_help: str | None = None) -> None:
    p.add_argument(
        "--fee",
        type=_non_negative,
        default=None,
        help="transaction fee (default: the policy minimum, 10 without --home)",
    )
    if wait_help:
        p.add_argument("--wait", action="store_true", help=wait_help)
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"give up waiting after S seconds, exit status 3 (default {DEFAULT_TIMEOUT_S:g})",
    )


def _prepare_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prepare",
        metavar="PREPARED.json",
        default=None,
        help="sign the application and print its challenge WITHOUT submitting it, saving it "
        "to this file: publish the challenge first, then `dpkid cert submit PREPARED.json` "
        "(validators check as soon as an application is on chain)",
    )


def _leaf(
    sub: Any, name: str, fn: Callable[[Ctx], int], help: str, description: str = ""
) -> argparse.ArgumentParser:
    p = add_command(sub, name, help, description)
    p.set_defaults(func=lambda args: fn(Ctx(args)))
    return p


def add_parsers(sub: Any) -> None:
    _add_account(sub)
    _add_cert(sub)
    _add_authz(sub)
    from dpkid.cli.verify import add_root_parsers

    add_root_parsers(sub)
    _add_endorse(sub)
    v = _leaf(sub, "validators", cmd_validators, "list the current validator set")
    _connection(v)
    s = _leaf(sub, "status", cmd_status, "show a node's chain, height, peers and sync state")
    _connection(s)


def _group(sub: Any, name: str, help: str) -> Any:
    g = sub.add_parser(name, help=help, description=help, epilog=EXIT_HELP)
    return g.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def _add_account(sub: Any) -> None:
    ss = _group(sub, "account", "create and inspect accounts, send tokens")
    p = _leaf(ss, "new", cmd_account_new, "create an account key file (mode 0600)")
    p.add_argument("--out", required=True, metavar="ACCOUNT.json", help="where to write the key")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    add_json(p)

    p = _leaf(ss, "show", cmd_account_show, "show an account's balance and nonce")
    p.add_argument("address", nargs="?", help="account address (40 hex digits)")
    _account_key(p, "show the account of this dpkid key file", required=False, old=("--key",))
    _connection(p)

    p = _leaf(
        ss,
        "transfer",
        cmd_account_transfer,
        "send tokens to another account",
        "Send tokens. The sender's committed balance is checked first: a transfer it\n"
        "cannot cover (amount plus fee) is refused, exit status 1, and nothing is sent.",
    )
    _account_key(p, "the sending account's dpkid key file", old=("--key",))
    p.add_argument("--to", required=True, metavar="ADDRESS", help="recipient address")
    p.add_argument("--amount", required=True, type=_positive, metavar="N")
    _tx_opts(p, "wait until the transfer is committed and show the new balance")
    _connection(p)


def _authz_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--authz",
        action="append",
        metavar="AUTHZ_ID",
        help="a valid authorization of this account (`dpkid authz request`), one per name:"
        " the application then needs no new domain check",
    )


def _add_cert(sub: Any) -> None:
    ss = _group(sub, "cert", "apply for, inspect, export, renew and revoke certificates")
    p = _leaf(
        ss,
        "apply",
        cmd_cert_apply,
        "apply for a DV, OV or EV certificate",
        "Apply for a certificate and print the domain-control challenges to publish.\n"
        "Domain names may be given in Unicode (U-labels); they are converted to A-labels.\n"
        "The certificate's key is read from a PEM (or DER) private or public key, or from\n"
        "a CSR whose signature is verified; a CSR's DNS subjectAltNames are used when no\n"
        "--domain is given. The escrow defaults to the policy fee of the type, read from\n"
        "HOME/genesis.json (so give --escrow when connecting with --socket only).",
    )
    p.add_argument(
        "--type", required=True, type=str.lower, choices=["dv", "ov", "ev"], help="validation level"
    )
    p.add_argument(
        "--domain", action="append", metavar="D", help="a name to certify (repeat for more)"
    )
    k = p.add_mutually_exclusive_group()
    ck = k.add_argument(
        "--cert-key", metavar="KEY.pem", help="the certificate's private or public key (PEM/DER)"
    )
    hidden_alias(p, ck, "--key")
    k.add_argument("--csr", metavar="CSR.pem", help="a certificate signing request (PEM/DER)")
    _account_key(p, "the paying applicant's dpkid key file")
    _authz_opt(p)
    org = p.add_argument_group("organization (OV and EV only)")
    for name, what in (
        ("name", "legal name (required; default: the CSR's O)"),
        ("country", "ISO 3166 two-letter country (required; default: the CSR's C)"),
        ("state", "state or province (default: the CSR's ST)"),
        ("locality", "city (default: the CSR's L)"),
        ("registration-id", "company registration number (required for EV)"),
        ("jurisdiction", "registering jurisdiction (required for EV)"),
    ):
        org.add_argument(f"--org-{name}", default=None, metavar="TEXT", help=what)
    p.add_argument("--days", type=_positive, default=None, help="validity (default policy max)")
    p.add_argument("--escrow", type=_non_negative, default=None, help="escrow (default: type fee)")
    _prepare_opt(p)
    _tx_opts(p, WAIT_ISSUED)
    _connection(p)

    p = _leaf(
        ss,
        "submit",
        cmd_cert_submit,
        "submit an application saved by `cert apply --prepare` / `cert renew --prepare`",
    )
    p.add_argument("file", metavar="PREPARED.json")
    _tx_opts(p, WAIT_ISSUED)
    _connection(p)

    for name, fn, helptext in (
        (
            "status",
            cmd_cert_status,
            "a certificate's, application's or authorization's status, with each "
            "validator's check (exit 1 unless valid/pending/issued)",
        ),
        ("show", cmd_cert_show, "the full record of a certificate, application or authorization"),
    ):
        p = _leaf(ss, name, fn, helptext)
        p.add_argument("id", metavar="ID", help="certificate, application or authorization id")
        _connection(p)

    p = _leaf(ss, "list", cmd_cert_list, "certificates for a domain name")
    p.add_argument("--domain", required=True, metavar="D")
    _connection(p)

    p = _leaf(
        ss,
        "revoke",
        cmd_cert_revoke,
        "revoke a certificate (as its owner, or as the holder of its key)",
        "Revoke a certificate. The owning account revokes with --account-key alone;\n"
        "whoever holds the certificate's private key revokes with --cert-key KEY.pem,\n"
        "paying the fee from --account-key.",
    )
    p.add_argument("id", metavar="ID", help="certificate id")
    p.add_argument("--reason", required=True, choices=list(REASONS))
    _account_key(p, "the owner's or payer's dpkid key file")
    p.add_argument("--cert-key", metavar="KEY.pem", help="the certificate's private key (PEM/DER)")
    _tx_opts(p)
    _connection(p)

    p = _leaf(
        ss,
        "renew",
        cmd_cert_renew,
        "renew a certificate (optionally rotating its key); validation runs again",
    )
    p.add_argument("id", metavar="ID", help="certificate id")
    _account_key(p, "the owning account's dpkid key file")
    _key_arg(
        p,
        "--new-cert-key",
        "KEY.pem",
        "the certificate's new key (private, public or CSR; PEM/DER)",
        old=("--new-key",),
    )
    p.add_argument("--days", type=_positive, default=None)
    _authz_opt(p)
    p.add_argument("--escrow", type=_non_negative, default=None)
    _prepare_opt(p)
    _tx_opts(p, WAIT_ISSUED)
    _connection(p)

    from dpkid.cli.verify import add_export_parser

    add_export_parser(ss, "export")


def _add_endorse(sub: Any) -> None:
    ss = _group(sub, "endorse", "endorser duties: vet OV/EV organization claims")
    p = _leaf(
        ss,
        "list-pending",
        cmd_endorse_list_pending,
        "pending OV/EV applications this endorser has not decided (scans recent blocks)",
        "List pending OV/EV applications this endorser has not yet decided.\n"
        "There is no RPC that lists applications: this scans the transactions of the\n"
        "last --blocks blocks for applications and renewals, so older ones are missed.",
    )
    _endorser_key(p)
    p.add_argument("--blocks", type=_positive, default=DEFAULT_SCAN_BLOCKS, metavar="N")
    _connection(p)

    for name, fn, helptext in (
        ("approve", cmd_endorse_approve, "approve an application's organization claims"),
        ("reject", cmd_endorse_reject, "reject an application's organization claims"),
    ):
        p = _leaf(ss, name, fn, helptext)
        p.add_argument("app_id", metavar="APP_ID")
        _endorser_key(p)
        p.add_argument("--reason", required=name == "reject", default=None)
        _tx_opts(p)
        _connection(p)

    p = _leaf(
        ss,
        "withdraw",
        cmd_endorse_withdraw,
        "withdraw this endorser's endorsement of an issued certificate",
    )
    p.add_argument("cert_id", metavar="CERT_ID")
    _endorser_key(p)
    p.add_argument("--reason", default=None)
    _tx_opts(p)
    _connection(p)

    p = _leaf(
        ss,
        "revoke",
        cmd_endorse_revoke,
        "vote to revoke an OV/EV certificate (revoked once the policy quorum votes)",
    )
    p.add_argument("cert_id", metavar="CERT_ID")
    _endorser_key(p)
    p.add_argument("--reason", required=True, choices=list(REASONS))
    _tx_opts(p)
    _connection(p)


# ====================================================================== authorizations (SPEC §7.9)


def _authz_lines(a: dict[str, Any]) -> list[str]:
    out = [
        f"authorization {a['authz_id']} for {a['name']} ({a['format']} {a['method']}): "
        f"{a['status_at_head']}"
    ]
    if a["status_at_head"] == "valid":
        out[0] += f" until {a['valid_until_ms']} ms"
    for c in a["checks"]:
        what = "ok" if c["ok"] else f"FAILED [{c['problem']}] {c['detail']}"
        out.append(f"  validator {c['validator'][:12]}: {what} (height {c['height']})")
    if not a["checks"]:
        out.append("  no validator has reported yet")
    return out


def _authz(ctx: Ctx, authz_id: str) -> dict[str, Any]:
    got: dict[str, Any] = ctx.client().call("authz_get", {"authz_id": authz_id})["authorization"]
    return got


def cmd_authz_request(ctx: Ctx) -> int:
    import time

    from dpkid.core.crypto import sha256
    from dpkid.core.domains import DomainError, validate_domain
    from dpkid.core.state.authz import AUTHZ_TAG

    a = ctx.args
    try:
        name = validate_domain(a.domain)
    except DomainError as exc:
        raise UsageError(f"--domain: {exc}") from None
    method = a.method or ("dns-01" if name.startswith("*.") else "http-01")
    fmt = "acme" if a.acme_token or a.acme_thumbprint else "dpkid"
    key = _read_account_key(a.account_key)
    token = a.acme_token or ""
    if fmt == "acme" and not token:
        import os

        from dpkid.core.challenges import acme_token_for

        token = acme_token_for(key.public_key, os.urandom(16))
    body = AuthzRequest(name, fmt, method, token, a.acme_thumbprint or "")  # type: ignore[arg-type]
    h = ctx.send(key, body)
    res = ctx.commit(h)
    authz_id = sha256(AUTHZ_TAG + bytes.fromhex(h)).hex()
    az = _authz(ctx, authz_id)
    ch = az["challenge"]
    lines = [f"authorization {authz_id} requested at height {res['height']} (tx {h})"]
    if method == "http-01":
        lines.append(f"  serve {ch['http_body']!r} at http://{name}{ch['http_path']}")
    else:
        d = ch["dns"][0]
        lines.append(f"  publish TXT {d['name']} = {d['value']!r}")
    if not a.wait:
        ctx.emit({"authz_id": authz_id, "tx_hash": h, "authorization": az}, lines)
        return Exit.OK
    for line in lines:
        ctx.say(line)
    deadline = time.monotonic() + ctx.timeout()
    shown = ""
    while True:
        az = _authz(ctx, authz_id)
        text = "\n".join(_authz_lines(az))
        if text != shown:
            shown = text
            ctx.say(text)
        if az["status_at_head"] != "pending":
            break
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {ctx.timeout():g} s; authorization {authz_id} is still pending",
                {"authz_id": authz_id, "authorization": az},
            )
        time.sleep(0.5)
    out = {"authz_id": authz_id, "tx_hash": h, "authorization": az, "status": az["status_at_head"]}
    if az["status_at_head"] == "valid":
        ctx.emit(out, [f"valid: cite it with `dpkid cert apply ... --authz {authz_id}`"])
        return Exit.OK
    raise Refused(f"authorization {authz_id} is {az['status_at_head']}", out)


def cmd_authz_status(ctx: Ctx) -> int:
    az = _authz(ctx, ctx.args.id)
    ctx.emit({"authorization": az, "status": az["status_at_head"]}, _authz_lines(az))
    return Exit.OK


def _add_authz(sub: Any) -> None:
    ss = _group(sub, "authz", "domain authorizations: prove control of a name once, cite it")
    p = _leaf(
        ss,
        "request",
        cmd_authz_request,
        "ask the validators to check control of a name (http-01 or dns-01)",
        "Request an authorization for one name and print what to publish. With --wait,\n"
        "follow each validator's check (its ACME problem type and reason) until the\n"
        "authorization is valid or invalid; a valid one is cited by `cert apply --authz`\n"
        "and `cert renew --authz` for the policy's reuse window (SPEC section 7.9).\n"
        "--acme-token/--acme-thumbprint use ACME's format (RFC 8555 section 8).",
    )
    p.add_argument("--domain", required=True, metavar="NAME")
    p.add_argument("--method", choices=["http-01", "dns-01"], default=None)
    p.add_argument(
        "--acme-thumbprint",
        default=None,
        metavar="THUMBPRINT",
        help="use ACME's format, with this RFC 7638 thumbprint of the ACME account key",
    )
    p.add_argument(
        "--acme-token",
        default=None,
        metavar="TOKEN",
        help="the ACME token (default: a fresh one bound to the account key, as the ledger needs)",
    )
    _account_key(p, "the account that will hold the authorization")
    _tx_opts(p, "wait until the validators decide, printing each one's check")
    _connection(p)
    p = _leaf(ss, "status", cmd_authz_status, "show an authorization and every validator's check")
    p.add_argument("id", metavar="AUTHZ_ID")
    _connection(p)
