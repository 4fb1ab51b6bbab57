"""`dpkid verify` and `dpkid cert export`: light-client checks and X.509 export."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpkid.cli.common import (
    Exit,
    Progress,
    Refused,
    UsageError,
    add_command,
    add_node_args,
    hidden_alias,
    node_call,
    node_client,
    print_json,
    progress_for,
    read_bytes,
    trusted_genesis,
    write_file,
)
from dpkid.client.lightclient import CertVerdict
from dpkid.core.types import Genesis, Header


def header_progress(progress: Progress) -> Callable[[Header, int], None]:
    """An ``on_header`` for the light-client walk: "verified headers N/M"."""

    def on_header(header: Header, target: int) -> None:
        progress(f"verifying headers from genesis: {header.height}/{target}")
        if header.height == target:
            progress.done(f"verified {target} headers")

    return on_header


def not_checkable(reason: str) -> dict[str, Any]:
    """The verdict document of a certificate the ledger cannot speak for."""
    return {
        "valid": False,
        "status": "unknown",
        "reason": reason,
        "height": None,
        "time_ms": None,
        "cert_type": None,
        "certificate": None,
    }


def load_certificate(path: str) -> Any:
    """The ParsedCert of a PEM/DER file; UsageError names the file and what it is."""
    from dpkid.client.verify import NotACertificate, parse_pem

    data = read_bytes(path, "certificate")
    try:
        return parse_pem(data)
    except NotACertificate as exc:
        raise UsageError(f"{path} is {exc}") from None


def print_verdict(args: argparse.Namespace, doc: dict[str, Any], lines: list[str]) -> int:
    if args.json:
        print_json(doc)
    else:
        for line in lines:
            print(line)
    return Exit.OK if doc["valid"] else Exit.NO


def print_ledger_verdict(
    args: argparse.Namespace,
    genesis: Genesis,
    parsed: Any,
    who: str,
    lines: Callable[[CertVerdict], list[str]],
    extra: dict[str, Any] | None = None,
) -> int:
    """Verify ``parsed`` on the ledger, trusting only ``genesis``, and print the verdict
    (with ``extra`` in its document). One the ledger cannot speak for is NOT VALID,
    "``who``: why"."""
    from dpkid.client.verify import CertificateError, default_store_path, verify_certificate

    more = extra or {}
    stats: dict[str, Any] = {}
    store = None
    if not getattr(args, "no_trust_store", False):
        given = getattr(args, "trust_store", None)
        store = Path(given) if given else default_store_path(genesis.chain_id)
    try:
        verdict = verify_certificate(
            node_call(args),
            genesis,
            parsed,
            max_header_age_s=args.max_age,
            on_header=header_progress(progress_for(args)),
            checkpoint=checkpoint_of(args),
            store=store,
            stats=stats,
        )
    except CertificateError as exc:
        reason = f"{who}: {exc}"
        return print_verdict(args, not_checkable(reason) | more, [f"NOT VALID: {reason}"])
    light = {"light_client": stats | {"store": str(store) if store else None}}
    return print_verdict(args, verdict.as_json() | more | light, lines(verdict))


def checkpoint_of(args: argparse.Namespace) -> tuple[int, bytes] | None:
    """--trust-height H --trust-hash X: a header published out of band (LIGHT.md §6)."""
    h, x = getattr(args, "trust_height", None), getattr(args, "trust_hash", None)
    if h is None and x is None:
        return None
    if h is None or x is None:
        raise UsageError("--trust-height and --trust-hash go together")
    try:
        raw = bytes.fromhex(x.strip().lower().removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32 or h < 1:
        raise UsageError("--trust-hash is a header hash of 64 hex digits, --trust-height >= 1")
    return h, raw


def add_trust_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("light client (protocol/LIGHT.md)")
    g.add_argument("--trust-height", type=int, default=None, metavar="H", help="checkpoint height")
    g.add_argument(
        "--trust-hash",
        default=None,
        metavar="HASH",
        help="the checkpoint's header hash, from a source you trust (instead of the genesis)",
    )
    g.add_argument(
        "--trust-store",
        default=None,
        metavar="FILE",
        help="the trusted header kept between runs (0600; default "
        "$XDG_STATE_HOME/dpkid/light-CHAIN.json)",
    )
    g.add_argument(
        "--no-trust-store", action="store_true", help="start from the trust root every time"
    )


def _verdict_lines(verdict: CertVerdict) -> list[str]:
    typ = verdict.cert.cert_type if verdict.cert else "-"
    lines = [
        f"{'VALID' if verdict.valid else 'NOT VALID'}: {verdict.reason}",
        f"  status {verdict.status}, type {typ}, judged at verified height {verdict.height}",
    ]
    if verdict.cert:
        lines.append(f"  domains {', '.join(verdict.cert.domains)}")
        lines.append(f"  certificate id {verdict.cert.cert_id.hex()}")
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    genesis = trusted_genesis(args)
    if args.bundle:
        return _verify_bundle(args, genesis)
    if not args.cert:
        raise UsageError("give CERT.pem, or --bundle FILE")
    parsed = load_certificate(args.cert)
    return print_ledger_verdict(args, genesis, parsed, args.cert, _verdict_lines)


def _verify_bundle(args: argparse.Namespace, genesis: Genesis) -> int:
    """LIGHT.md §7: no node is asked; the file alone proves the verdict."""
    import time

    from dpkid.client.bundle import load_bundle, verify_bundle
    from dpkid.client.verify import TrustRoot

    if args.cert:
        raise UsageError("--bundle carries its certificate: give no CERT.pem with it")
    doc = load_bundle(read_bytes(args.bundle, "bundle"))
    root = TrustRoot(genesis, checkpoint_of(args))
    verdict = verify_bundle(doc, root, time.time_ns() // 1_000_000)
    lines = _verdict_lines(verdict)
    lines.append(f"  offline, from bundle {args.bundle} (header time {verdict.time_ms} ms)")
    return print_verdict(args, verdict.as_json() | {"bundle": args.bundle}, lines)


def _cert_id(text: str) -> bytes:
    t = text.strip().lower().removeprefix("0x")
    try:
        cert_id = bytes.fromhex(t)
    except ValueError:
        cert_id = b""
    if len(cert_id) != 32:
        raise UsageError(f"the certificate id is 64 hex digits, not {text[:80]!r}")
    return cert_id


def _subject_key(path: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = read_bytes(path, "key file")
    if data.lstrip().startswith(b"{") and b'"seed"' in data:
        raise UsageError(
            f"{path} is a dpkid key file (an account or endorser key); --cert-key takes the "
            "certificate's private key (PEM or DER)"
        )
    loader = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in data
        else serialization.load_der_private_key
    )
    try:
        return loader(data, password=None)
    except TypeError:
        raise UsageError(f"{path} is an encrypted private key; give it unencrypted") from None
    except Exception:
        raise UsageError(f"{path} is not a private key (PEM or DER)") from None


def _proven_tss(args: argparse.Namespace, method: str, params: Any, key: bytes) -> dict[str, Any]:
    """Ask the node for a threshold-signed object and check its record's proof
    against the header the node returns (as `cert export` always did); with
    --wait, poll until it is signed. Returns the answer and the proven record."""
    import time

    from dpkid.client.lightclient import decode_header
    from dpkid.client.rpc import RpcClientError
    from dpkid.core.state.proofs import ProofError, decode_proof, verify_record

    client = node_client(args)
    deadline = time.monotonic() + max(0, getattr(args, "wait", 0) or 0)
    while True:
        try:
            res: dict[str, Any] = client.call(method, params)
            break
        except RpcClientError as exc:
            if exc.code != -32005 or time.monotonic() >= deadline:
                raise
            time.sleep(0.25)
    header = decode_header(res["header_bytes"])
    try:
        rec = verify_record(header.app_hash, decode_proof(bytes.fromhex(res["proof"])), key)
    except (ProofError, ValueError) as exc:
        raise UsageError(f"the node's proof for {method} does not verify: {exc}") from None
    if rec is None:
        raise Refused(f"{method}: the node's proof says there is no such record")
    res["_record"] = rec
    return res


def _write_out(args: argparse.Namespace, text: str, what: str, doc: dict[str, Any]) -> int:
    if args.out:
        write_file(Path(args.out), text, what)
    if args.json:
        print_json({**doc, "file": args.out})
    elif args.out:
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return Exit.OK


def cmd_root_export(args: argparse.Namespace) -> int:
    from dpkid.core.crypto import sha256
    from dpkid.core.state import tss as rules

    res = _proven_tss(args, "root_get", None, rules.K_TSS_ROOT)
    der = bytes.fromhex(res["root_der"])
    if not der or sha256(der) != res["_record"].cert_hash or res["_record"].der != der:
        raise UsageError("the node's root does not match the proven ledger record")
    return _write_out(
        args,
        res["root_pem"],
        "root certificate",
        {"root_hash": res["root_hash"], "group_pk": res["group_pk"], "pem": res["root_pem"]},
    )


def cmd_root_crl(args: argparse.Namespace) -> int:
    from dpkid.core.state import tss as rules

    res = _proven_tss(args, "crl_get", None, rules.K_TSS_CRL)
    if res["_record"].der != bytes.fromhex(res["crl_der"]):
        raise UsageError("the node's CRL does not match the proven ledger record")
    return _write_out(
        args,
        res["crl_pem"],
        "CRL",
        {
            "number": res["number"],
            "this_update_s": res["this_update_s"],
            "next_update_s": res["next_update_s"],
            "pem": res["crl_pem"],
        },
    )


def cmd_export(args: argparse.Namespace) -> int:
    cert_id = _cert_id(args.cert_id)
    if args.bundle:
        return _export_bundle(args, cert_id)
    if args.cert_key:
        return _export_self_signed(args, cert_id)
    from dpkid.core.state import tss as rules

    res = _proven_tss(args, "cert_x509", {"cert_id": cert_id.hex()}, rules.key_x509(cert_id))
    if res["_record"].der != bytes.fromhex(res["leaf_der"]):
        raise UsageError("the node's certificate does not match the proven ledger record")
    text = res["leaf_pem"] if args.leaf_only else res["chain_pem"]
    return _write_out(
        args,
        text,
        "certificate",
        {
            "cert_id": cert_id.hex(),
            "version": res["version"],
            "pem": res["leaf_pem"],
            "root_pem": res["root_pem"],
            "self_signed": False,
        },
    )


def _export_bundle(args: argparse.Namespace, cert_id: bytes) -> int:
    import json
    import time

    from dpkid.client.bundle import export_bundle
    from dpkid.client.verify import TrustRoot

    genesis = trusted_genesis(args)
    root = TrustRoot(genesis, checkpoint_of(args))
    doc = export_bundle(node_call(args), root, cert_id, time.time_ns() // 1_000_000)
    text = json.dumps(doc, sort_keys=True, indent=1) + "\n"
    write_file(Path(args.bundle), text, "bundle")
    summary = {
        "cert_id": cert_id.hex(),
        "bundle": args.bundle,
        "bytes": len(text.encode()),
        "light_blocks": len(doc["light_blocks"]),
        "proof_height": doc["proof_height"],
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"wrote {args.bundle}: {summary['bytes']} bytes, {summary['light_blocks']} light "
            f"blocks to height {summary['proof_height']}; check it offline with "
            f"`dpkid verify --bundle {args.bundle} --trust GENESIS.json`"
        )
    return Exit.OK


def _export_self_signed(args: argparse.Namespace, cert_id: bytes) -> int:
    from dpkid.client.lightclient import decode_header
    from dpkid.client.x509 import ExportError, to_pem, to_x509
    from dpkid.core.state.proofs import ProofError, decode_proof, verify_cert

    key = _subject_key(args.cert_key)
    client = node_client(args)
    status = client.status()
    res = client.call("cert_proof", {"cert_id": cert_id.hex()})
    header = decode_header(res["header_bytes"])
    try:
        cert = verify_cert(header.app_hash, cert_id, decode_proof(bytes.fromhex(res["proof"])))
    except (ProofError, ValueError) as exc:
        raise UsageError(f"the node's proof for {cert_id.hex()} does not verify: {exc}") from None
    if cert is None:
        raise Refused(f"no certificate {cert_id.hex()} on the ledger")
    try:
        x = to_x509(cert, status["chain_id"], header.height, signing_key=key)
    except ExportError as exc:
        raise UsageError(f"{args.cert_key}: {exc}") from None
    pem = to_pem(x).decode()
    return _write_out(
        args, pem, "certificate", {"cert_id": cert_id.hex(), "pem": pem, "self_signed": True}
    )


def add_root_parsers(sub: Any) -> None:
    """`dpkid root export` and `dpkid root crl`."""
    g = sub.add_parser(
        "root",
        help="the validators' root certificate and CRL, for ordinary TLS software",
        description="The root certificate (a CA whose key the validators hold in shares; no one\n"
        "holds it whole) and its CRL, both threshold-signed on the ledger and checked\n"
        "here against a Merkle proof. Install root.pem as a trust anchor; give crl.pem to\n"
        "`openssl verify -crl_check`. See protocol/SPEC.md sections 14 and 16.",
    )
    ss = g.add_subparsers(dest="root_command", metavar="ACTION", required=True)
    for name, fn, what in (
        ("export", cmd_root_export, "write the root certificate (PEM)"),
        ("crl", cmd_root_crl, "write the newest CRL (PEM)"),
    ):
        p = add_command(ss, name, what, what + ", checked against the ledger.")
        p.add_argument(
            "--out", default=None, metavar="FILE.pem", help="write here (default stdout)"
        )
        p.add_argument(
            "--wait",
            type=float,
            default=0,
            metavar="SECONDS",
            help="wait this long for it to be signed (default: do not wait)",
        )
        add_node_args(p)
        p.set_defaults(func=fn)


def add_export_parser(sub: Any, name: str, hidden: bool = False) -> None:
    """`cert export` (and its hidden old name, the top-level `export-cert`)."""
    e = add_command(
        sub,
        name,
        "write an issued certificate as X.509 v3 PEM, with the root (checked against a proof)",
        "Write the certificate the validators threshold-signed on the ledger, followed\n"
        "by the root (`dpkid root export`), after checking the record's Merkle proof.\n"
        "openssl, curl, Python and Go verify it against root.pem. With --cert-key (the\n"
        "certificate's private key) write instead a self-signed export that proves\n"
        "possession. See protocol/SPEC.md sections 14 and 16.",
        hidden=hidden,
    )
    e.add_argument("cert_id", metavar="CERT_ID", help="certificate id (64 hex digits)")
    k = e.add_argument(
        "--cert-key",
        metavar="KEY.pem",
        default=None,
        help="the certificate's private key: self-sign",
    )
    hidden_alias(e, k, "--key")
    e.add_argument("--out", default=None, metavar="FILE.pem", help="write here (default stdout)")
    e.add_argument("--leaf-only", action="store_true", help="write the leaf without the root")
    e.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long for the validators to sign it (default: do not wait)",
    )
    e.add_argument(
        "--bundle",
        default=None,
        metavar="BUNDLE.json",
        help="write an offline proof bundle instead (LIGHT.md section 7), from the trust root",
    )
    add_trust_args(e)
    add_node_args(e, genesis=True)
    e.set_defaults(func=cmd_export)


def add_parsers(sub: Any) -> None:
    v = add_command(
        sub,
        "verify",
        "verify a certificate against the ledger, trusting no node",
        "Verify a certificate against the ledger, trusting only the genesis: every\n"
        "header's commit from genesis up, then the certificate's Merkle proof. Exit 0 valid,\n"
        "1 not valid (revoked, expired, unknown, another chain), 2 no answer could be had\n"
        "(a bad file, the node unreachable, or answers that do not verify).",
    )
    v.add_argument("cert", metavar="CERT.pem", nargs="?", help="certificate file (PEM or DER)")
    v.add_argument(
        "--bundle",
        default=None,
        metavar="BUNDLE.json",
        help="verify an offline proof bundle (`cert export --bundle`) with no node at all",
    )
    v.add_argument("--max-age", type=int, default=600, help="reject headers older than this (s)")
    add_trust_args(v)
    add_node_args(v, genesis=True)
    v.set_defaults(func=cmd_verify)

    add_export_parser(sub, "export-cert", hidden=True)
