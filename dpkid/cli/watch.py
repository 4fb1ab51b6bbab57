"""Monitors, auditors and TLS checks: `dpkid monitor`, `dpkid audit`, `dpkid tls-check`."""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from dpkid.cli.verify import rpc_for, trusted_genesis
from dpkid.client.lightclient import VerifyError
from dpkid.client.rpc import RpcClientError
from dpkid.daemon.config import ConfigError, Home

# ------------------------------------------------------------------ tls-check


def fetch_tls_certificate(host: str, port: int, server_name: str, timeout_s: float = 10) -> bytes:
    """The server's leaf certificate (DER). No trust decision is made here:
    the ledger decides, not a CA bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        sni = server_name if not _is_ip(server_name) else None
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("the server sent no certificate")
    return der


def _is_ip(s: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in s else socket.AF_INET, s)
    except OSError:
        return False
    return True


def cmd_tls_check(args: argparse.Namespace) -> int:
    from cryptography import x509

    from dpkid.client.verify import parsed_from_x509, verify_certificate

    host, _, port_s = args.target.rpartition(":")
    if not host or not port_s.isdigit():
        print("dpkid tls-check: give HOST:PORT", file=sys.stderr)
        return 2
    name = args.name or host
    try:
        genesis = trusted_genesis(args)
        der = fetch_tls_certificate(host, int(port_s), name)
        parsed = parsed_from_x509(x509.load_der_x509_certificate(der))
        if not _is_ip(name):
            parsed.domains = [name]
        verdict = verify_certificate(rpc_for(args), genesis, parsed, max_header_age_s=args.max_age)
    except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
        print(f"dpkid tls-check: {exc}", file=sys.stderr)
        return 2
    except VerifyError as exc:
        print(
            f"dpkid tls-check: verification error (do not trust this node): {exc}", file=sys.stderr
        )
        return 2
    except RpcClientError as exc:
        print(f"dpkid tls-check: node error: {exc.message}", file=sys.stderr)
        return 2
    out = verdict.as_json() | {"server": args.target, "name": name}
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(
            f"{'VALID' if verdict.valid else 'NOT VALID'}: {args.target} ({name}): {verdict.reason}"
        )
        print(f"  status {verdict.status}, judged at verified height {verdict.height}")
    return 0 if verdict.valid else 1


# ------------------------------------------------------------------ audit


def audit(rpc: Any, genesis: Any, from_height: int, state_file: Path | None) -> dict[str, Any]:
    """Verify every header, commit and link; every log consistency; report evidence."""
    from dpkid.client.lightclient import decode_header
    from dpkid.client.verify import walk_headers
    from dpkid.core.consensus.messages import header_hash, tx_root
    from dpkid.core.merkle import verify_consistency
    from dpkid.core.state.machine import K_META
    from dpkid.core.state.proofs import decode_proof, verify_record

    problems: list[str] = []
    findings: list[str] = []
    # Take the log checkpoint first and walk the chain at least to its header,
    # so a block committed between two calls cannot look like an inconsistency.
    cp = rpc("log_checkpoint", {})
    cp_header = decode_header(cp["header_bytes"])
    status = rpc("status", {})
    head = max(int(status["height"]), cp_header.height)
    hashes: dict[int, bytes] = {}
    try:
        trusted = walk_headers(
            rpc, genesis, head, lambda hd: hashes.__setitem__(hd.height, header_hash(hd))
        )
    except VerifyError as exc:
        return {"ok": False, "height": head, "problems": [f"header chain: {exc}"], "findings": []}
    # Block bodies: they must match the verified headers; evidence is reported.
    for h in range(max(1, from_height), head + 1):
        b = rpc("block_get", {"height": h})
        header = decode_header(b["header_bytes"])
        if header_hash(header) != hashes.get(h):
            problems.append(f"block {h}: body served with a header that is not the verified one")
            continue
        txs = [bytes.fromhex(t) for t in b["txs"]]
        if tx_root(txs) != header.tx_root:
            problems.append(f"block {h}: transactions do not match the header's tx_root")
        for ev in b["evidence"]:
            findings.append(
                f"block {h}: evidence of equivocation by validator {ev['vote_a']['validator']} "
                f"at height {ev['vote_a']['height']} round {ev['vote_a']['round']}"
            )
    # The certificate log: the checkpoint is proven through the meta record,
    # and must extend every checkpoint an earlier audit saw.
    meta = None
    header = cp_header
    if trusted.header is None or header.height > trusted.height:
        problems.append("log checkpoint refers to a header beyond the verified chain")
    elif header_hash(header) != hashes.get(header.height):
        problems.append("log checkpoint comes with a header that is not the verified one")
    else:
        meta = verify_record(header.app_hash, decode_proof(bytes.fromhex(cp["proof"])), K_META)
        if meta is None or meta.log_size != cp["log_size"] or meta.log_root.hex() != cp["log_root"]:
            problems.append("log checkpoint does not match the proven meta record")
    seen: dict[str, Any] = {}
    if state_file is not None and state_file.exists():
        seen = json.loads(state_file.read_text())
    old = seen.get("log")
    if old and meta is not None:
        if old["size"] > meta.log_size:
            problems.append(f"certificate log shrank from {old['size']} to {meta.log_size}")
        else:
            cons = rpc("log_proof", {"old_size": old["size"], "new_size": meta.log_size})
            ok = verify_consistency(
                old["size"],
                meta.log_size,
                bytes.fromhex(old["root"]),
                meta.log_root,
                [bytes.fromhex(x) for x in cons["proof"]],
            )
            if not ok:
                problems.append(
                    f"certificate log at size {meta.log_size} is not consistent with the "
                    f"checkpoint at size {old['size']} seen earlier (a fork or rewrite)"
                )
            else:
                findings.append(
                    f"certificate log consistent from size {old['size']} to {meta.log_size}"
                )
    old_head = seen.get("head")
    if old_head and old_head["height"] <= head:
        b = rpc("block_get", {"height": old_head["height"]})
        if b["hash"] != old_head["hash"]:
            problems.append(f"block {old_head['height']} changed since the last audit: a fork")
    if state_file is not None and not problems and meta is not None:
        state_file.write_text(
            json.dumps(
                {
                    "log": {"size": meta.log_size, "root": meta.log_root.hex()},
                    "head": {"height": head, "hash": rpc("block_get", {"height": head})["hash"]},
                }
            )
        )
    return {"ok": not problems, "height": head, "problems": problems, "findings": findings}


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        genesis = trusted_genesis(args)
        report = audit(
            rpc_for(args), genesis, args.from_height, Path(args.state) if args.state else None
        )
    except (ConfigError, OSError, VerifyError, ValueError) as exc:
        print(f"dpkid audit: {exc}", file=sys.stderr)
        return 2
    except RpcClientError as exc:
        print(f"dpkid audit: node error: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(
            f"audited up to height {report['height']}: {'OK' if report['ok'] else 'PROBLEMS FOUND'}"
        )
        for p in report["problems"]:
            print(f"  problem: {p}")
        for f in report["findings"]:
            print(f"  {f}")
    return 0 if report["ok"] else 1


# ------------------------------------------------------------------ monitor


def _monitor_home(state_dir: Path, genesis_text: str, peers: list[str]) -> Path:
    from dpkid.cli.node import free_ports
    from dpkid.core.crypto import SigningKey
    from dpkid.daemon.config import NodeSettings, settings_to_toml, write_key

    home = Home(state_dir)
    if not home.key_file.exists():
        write_key(home.key_file, SigningKey(secrets.token_bytes(32)), role="monitor")
    home.data_dir.mkdir(parents=True, exist_ok=True)
    home.genesis_file.write_text(genesis_text)
    port = free_ports(1)[0]
    home.config_file.write_text(
        settings_to_toml(
            NodeSettings(
                moniker="monitor", listen_port=port, peers=peers, rpc_socket="monitor.sock"
            )
        )
    )
    return home.path


def cmd_monitor(args: argparse.Namespace) -> int:
    import trio

    from dpkid.core.domains import DomainError, normalize_domain
    from dpkid.core.keys import SubjectKeyError, parse_spki
    from dpkid.core.state.machine import key_cert
    from dpkid.daemon.config import read_settings
    from dpkid.daemon.daemon import NodeDaemon
    from dpkid.daemon.logs import setup_logging
    from dpkid.daemon.rpc_methods import domain_watch_matches

    try:
        watched = [normalize_domain(d) for d in args.domain]
    except DomainError as exc:
        print(f"dpkid monitor: {exc}", file=sys.stderr)
        return 2
    known: set[bytes] = set()
    for f in args.known_key:
        try:
            from cryptography.hazmat.primitives import serialization

            data = Path(f).read_bytes()
            try:
                pub = serialization.load_pem_public_key(data)
            except ValueError:
                pub = serialization.load_pem_private_key(data, password=None).public_key()
            der = pub.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            parse_spki(der)
            known.add(der)
        except (OSError, ValueError, SubjectKeyError) as exc:
            print(f"dpkid monitor: cannot read known key {f}: {exc}", file=sys.stderr)
            return 2
    if args.home:
        node = Home(Path(args.home))
        s = read_settings(node.config_file)
        from dpkid.cli.node import peer_id_of
        from dpkid.daemon.config import read_key

        peers = [
            f"/ip4/{s.listen_host}/tcp/{s.listen_port}/p2p/{peer_id_of(read_key(node.key_file).seed)}"
        ]
        genesis_text = node.genesis_file.read_text()
    else:
        if not args.peer or not args.genesis:
            print(
                "dpkid monitor: give --home DIR, or --peer MULTIADDR with --genesis FILE",
                file=sys.stderr,
            )
            return 2
        peers = list(args.peer)
        genesis_text = Path(args.genesis).read_text()
    state_dir = Path(args.state_dir)
    home = _monitor_home(state_dir, genesis_text, peers)
    setup_logging(args.log_level, "json")

    def emit(obj: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(obj, sort_keys=True), flush=True)
        else:
            alert = "ALERT " if obj.get("alert") else ""
            print(
                f"{alert}{obj['event']} height {obj['height']} {obj['cert_type']} "
                f"{','.join(obj['domains'])} cert {obj['cert_id'][:16]}"
                + (f" ({obj['alert']})" if obj.get("alert") else ""),
                flush=True,
            )

    d = NodeDaemon(home)

    def on_block(e: Any) -> None:
        st = d.core.state
        events = list(e.events)
        for r in e.receipts:
            events.extend(r.events)
        for ev in events:
            if ev.kind not in ("cert_issued", "cert_revoked", "cert_degraded"):
                continue
            cert = dict(e.writes).get(key_cert(ev.ref)) or st.certificate(ev.ref)
            if cert is None or not any(domain_watch_matches(w, cert.domains) for w in watched):
                continue
            out: dict[str, Any] = {
                "event": ev.kind.removeprefix("cert_"),
                "height": e.block.header.height,
                "time_ms": e.block.header.time_ms,
                "cert_id": cert.cert_id.hex(),
                "cert_type": cert.cert_type,
                "domains": cert.domains,
                "spki_sha256": __import__("hashlib").sha256(cert.spki).hexdigest(),
            }
            if known and ev.kind == "cert_issued" and cert.spki not in known:
                out["alert"] = "certificate key is not a known key"
            emit(out)

    d.block_listeners.append(on_block)

    async def main() -> None:
        try:
            await d.run()
        finally:
            await d.aclose()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 130
    return 0


def add_parsers(sub: Any) -> None:
    t = sub.add_parser(
        "tls-check", help="TLS handshake, then verify the server certificate on the ledger"
    )
    t.add_argument("target", help="HOST:PORT")
    t.add_argument("--name", default=None, help="the domain to check (default: HOST); sent as SNI")
    t.add_argument("--home", default=None)
    t.add_argument("--rpc", default=None)
    t.add_argument("--trust", default=None)
    t.add_argument("--max-age", type=int, default=600)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_tls_check)

    a = sub.add_parser("audit", help="verify every header, commit, link and log consistency")
    a.add_argument("--home", default=None)
    a.add_argument("--rpc", default=None)
    a.add_argument("--trust", default=None)
    a.add_argument("--from", dest="from_height", type=int, default=1)
    a.add_argument("--state", default=None, help="file remembering checkpoints between audits")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_audit)

    m = sub.add_parser("monitor", help="watch certificate events for domains as a gossip peer")
    m.add_argument(
        "--domain", action="append", required=True, help="watch this domain and its subdomains"
    )
    m.add_argument(
        "--known-key", action="append", default=[], help="PEM key: alert on any other key"
    )
    m.add_argument("--home", default=None, help="follow the node at this home")
    m.add_argument("--peer", action="append", default=[], help="a node's multiaddr with /p2p/<id>")
    m.add_argument("--genesis", default=None, help="genesis.json (with --peer)")
    m.add_argument("--state-dir", default="dpkid-monitor", help="where the monitor keeps its chain")
    m.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_monitor)
