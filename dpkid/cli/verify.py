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
    from dpkid.client.verify import CertificateError, verify_certificate

    more = extra or {}
    try:
        verdict = verify_certificate(
            node_call(args),
            genesis,
            parsed,
            max_header_age_s=args.max_age,
            on_header=header_progress(progress_for(args)),
        )
    except CertificateError as exc:
        reason = f"{who}: {exc}"
        return print_verdict(args, not_checkable(reason) | more, [f"NOT VALID: {reason}"])
    return print_verdict(args, verdict.as_json() | more, lines(verdict))


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
    parsed = load_certificate(args.cert)
    return print_ledger_verdict(args, genesis, parsed, args.cert, _verdict_lines)


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


def cmd_export(args: argparse.Namespace) -> int:
    from dpkid.client.lightclient import decode_header
    from dpkid.client.x509 import ExportError, to_pem, to_x509
    from dpkid.core.state.proofs import ProofError, decode_proof, verify_cert

    cert_id = _cert_id(args.cert_id)
    key = _subject_key(args.cert_key) if args.cert_key else None
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
    pem = to_pem(x)
    if args.out:
        write_file(Path(args.out), pem, "certificate")
    if args.json:
        print_json(
            {
                "cert_id": cert_id.hex(),
                "file": args.out,
                "pem": pem.decode(),
                "self_signed": key is not None,
            }
        )
    elif args.out:
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(pem.decode())
    return Exit.OK


def add_export_parser(sub: Any, name: str, hidden: bool = False) -> None:
    """`cert export` (and its hidden old name, the top-level `export-cert`)."""
    e = add_command(
        sub,
        name,
        "write an issued certificate as an X.509 v3 PEM (checked against a proof)",
        "Fetch the certificate record with its Merkle proof, check the proof, and\n"
        "write it as X.509 v3. With --cert-key (the certificate's private key) it is\n"
        "self-signed, proving possession; otherwise it is signed by the chain's public\n"
        "export key. Trust comes from the ledger: see protocol/SPEC.md section 14.",
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
    add_node_args(e)
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
    v.add_argument("cert", metavar="CERT.pem", help="certificate file (PEM or DER)")
    v.add_argument("--max-age", type=int, default=600, help="reject headers older than this (s)")
    add_node_args(v, genesis=True)
    v.set_defaults(func=cmd_verify)

    add_export_parser(sub, "export-cert", hidden=True)
