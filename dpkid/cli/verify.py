"""`dpkid verify` and `dpkid export-cert`: light-client checks and X.509 export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dpkid.client.lightclient import VerifyError
from dpkid.client.rpc import RpcClientError, call_sync
from dpkid.core.types import Genesis
from dpkid.daemon.config import ConfigError, read_genesis


def rpc_for(args: argparse.Namespace) -> Any:
    home = Path(args.home) if getattr(args, "home", None) else Path(".")
    sock = getattr(args, "rpc", None)

    def call(method: str, params: dict[str, Any]) -> Any:
        return call_sync(home, method, params, socket_path=sock)

    return call


def trusted_genesis(args: argparse.Namespace) -> Genesis:
    path = (
        Path(args.trust)
        if args.trust
        else (Path(args.home) / "genesis.json" if args.home else None)
    )
    if path is None:
        raise ConfigError("give --trust genesis.json (or --home of a node whose genesis you trust)")
    try:
        return read_genesis(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def cmd_verify(args: argparse.Namespace) -> int:
    from dpkid.client.verify import parse_pem, verify_certificate

    try:
        genesis = trusted_genesis(args)
        pem = Path(args.cert).read_bytes()
        parsed = parse_pem(pem)
        verdict = verify_certificate(rpc_for(args), genesis, parsed, max_header_age_s=args.max_age)
    except (ConfigError, OSError) as exc:
        return _fail(args, 2, f"error: {exc}")
    except VerifyError as exc:
        return _fail(args, 2, f"verification error (do not trust this node): {exc}")
    except RpcClientError as exc:
        return _fail(args, 2, f"node error: {exc.message}")
    out = verdict.as_json()
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        word = "VALID" if verdict.valid else "NOT VALID"
        typ = verdict.cert.cert_type if verdict.cert else "-"
        print(f"{word}: {verdict.reason}")
        print(f"  status {verdict.status}, type {typ}, judged at verified height {verdict.height}")
        if verdict.cert:
            print(f"  domains {', '.join(verdict.cert.domains)}")
            print(f"  certificate id {verdict.cert.cert_id.hex()}")
    return 0 if verdict.valid else 1


def _fail(args: argparse.Namespace, code: int, msg: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"valid": False, "status": "error", "reason": msg}))
    else:
        print(f"dpkid: {msg}", file=sys.stderr)
    return code


def cmd_export(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from dpkid.client.lightclient import decode_header
    from dpkid.client.x509 import ExportError, to_pem, to_x509
    from dpkid.core.state.proofs import ProofError, decode_proof, verify_cert

    try:
        cert_id = bytes.fromhex(args.cert_id)
        if len(cert_id) != 32:
            raise ValueError
    except ValueError:
        print("dpkid export-cert: the certificate id is 64 hex digits", file=sys.stderr)
        return 2
    try:
        rpc = rpc_for(args)
        status = rpc("status", {})
        res = rpc("cert_proof", {"cert_id": cert_id.hex()})
        header = decode_header(res["header_bytes"])
        cert = verify_cert(header.app_hash, cert_id, decode_proof(bytes.fromhex(res["proof"])))
        if cert is None:
            print(
                f"dpkid export-cert: no certificate {args.cert_id} on the ledger", file=sys.stderr
            )
            return 1
        key = None
        if args.key:
            loaded = serialization.load_pem_private_key(Path(args.key).read_bytes(), password=None)
            key = loaded
        x = to_x509(cert, status["chain_id"], header.height, signing_key=key)  # type: ignore[arg-type]
    except (OSError, ValueError, ExportError, ProofError, VerifyError) as exc:
        print(f"dpkid export-cert: {exc}", file=sys.stderr)
        return 2
    except RpcClientError as exc:
        print(f"dpkid export-cert: node error: {exc.message}", file=sys.stderr)
        return 1
    pem = to_pem(x)
    if args.out:
        Path(args.out).write_bytes(pem)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(pem.decode())
    return 0


def add_parsers(sub: Any) -> None:
    v = sub.add_parser("verify", help="verify a certificate against the ledger, trusting no node")
    v.add_argument("cert", help="certificate file (PEM or DER)")
    v.add_argument(
        "--home", default=None, help="a node home (its socket; its genesis if no --trust)"
    )
    v.add_argument("--rpc", default=None, help="path of a node's RPC socket")
    v.add_argument("--trust", default=None, help="the genesis.json you trust")
    v.add_argument("--max-age", type=int, default=600, help="reject headers older than this (s)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser("export-cert", help="write an issued certificate as X.509 PEM")
    e.add_argument("cert_id")
    e.add_argument("--home", default=None)
    e.add_argument("--rpc", default=None)
    e.add_argument(
        "--key", default=None, help="subject private key PEM: self-sign (proves possession)"
    )
    e.add_argument("--out", default=None)
    e.set_defaults(func=cmd_export)
