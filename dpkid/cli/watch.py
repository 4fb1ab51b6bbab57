"""Monitors, auditors and TLS checks: `dpkid monitor`, `dpkid audit`, `dpkid tls-check`."""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import socket
import ssl
from pathlib import Path
from typing import Any, Final

from dpkid.cli.common import (
    Exit,
    Progress,
    UsageError,
    WaitTimeout,
    add_command,
    add_genesis_arg,
    add_json,
    add_node_args,
    genesis_path,
    home_dir,
    host_port,
    load_genesis,
    node_call,
    parse_host_port,
    print_json,
    progress_for,
    read_bytes,
    read_json_file,
    require_node_home,
    trusted_genesis,
    write_file,
)
from dpkid.cli.verify import add_trust_args, not_checkable, print_ledger_verdict, print_verdict
from dpkid.client.lightclient import CertVerdict, VerifyError
from dpkid.daemon.config import ConfigError, Home

TLS_PORT: Final = 443
TLS_TIMEOUT_S: Final = 10.0

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


def parse_target(text: str) -> tuple[str, int]:
    """HOST[:PORT] of a TLS server; the port defaults to 443."""
    return parse_host_port(text, "the server", default_port=TLS_PORT)


def _check_name(name: str, given: bool) -> str:
    """The name to check: --name must be a domain; the host connected to (an IP
    address, ``localhost``) may be no name a certificate can carry, and then no
    certificate is valid for it."""
    from dpkid.core.domains import DomainError, normalize_domain

    if _is_ip(name):
        return name
    try:
        return normalize_domain(name)
    except DomainError as exc:
        if given:
            raise UsageError(f"--name {name!r} is not a domain name: {exc}") from None
        return name.lower()


def cmd_tls_check(args: argparse.Namespace) -> int:
    from cryptography import x509

    from dpkid.client.verify import CertificateError, parsed_from_x509
    from dpkid.core.domains import domain_matches

    host, port = parse_target(args.target)
    server = host_port(host, port)
    # The name to check is the one asked for, else the host connected to, as a
    # TLS client checks it: a certificate that does not name it is not valid here.
    name = _check_name(args.name or host, given=bool(args.name))
    genesis = trusted_genesis(args)
    try:
        der = fetch_tls_certificate(host, port, name, timeout_s=args.timeout)
    except TimeoutError:
        raise WaitTimeout(
            f"the TLS server {server} did not answer within {args.timeout:g} s"
        ) from None
    except ssl.SSLError as exc:
        raise UsageError(f"TLS handshake with {server} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot connect to {server}: {exc.strerror or exc}") from None
    try:
        parsed = parsed_from_x509(x509.load_der_x509_certificate(der))
    except (ValueError, CertificateError) as exc:
        raise UsageError(f"the certificate {server} sent cannot be read: {exc}") from None
    extra = {"server": server, "name": name}
    if not any(domain_matches(d, name) for d in parsed.domains):
        named = ", ".join(parsed.domains) or "no domain"
        reason = f"the certificate of {server} names {named}, not {name}" + (
            "" if args.name else " (give --name DOMAIN to check another name)"
        )
        return print_verdict(
            args,
            not_checkable(reason) | {"status": "mismatch"} | extra,
            [f"NOT VALID: {reason}", "  status mismatch, judged on the certificate it sent"],
        )
    parsed.domains = [name]

    def lines(verdict: CertVerdict) -> list[str]:
        word = "VALID" if verdict.valid else "NOT VALID"
        return [
            f"{word}: {server} ({name}): {verdict.reason}",
            f"  status {verdict.status}, judged at verified height {verdict.height}",
        ]

    return print_ledger_verdict(args, genesis, parsed, f"the certificate of {server}", lines, extra)


# ------------------------------------------------------------------ audit


def read_audit_state(path: Path | None) -> dict[str, Any]:
    """What the last audit saw (``--state``); {} the first time."""
    if path is None or not path.exists():
        return {}
    seen = read_json_file(path, "audit state file")
    ok = isinstance(seen, dict)
    try:
        if ok and "log" in seen:
            ok = isinstance(seen["log"]["size"], int)
            bytes.fromhex(seen["log"]["root"])
        if ok and "head" in seen:
            ok = isinstance(seen["head"]["height"], int) and isinstance(seen["head"]["hash"], str)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(
            f"{path} is not an audit state file (one that dpkid audit --state wrote); "
            "remove it to start afresh"
        )
    state: dict[str, Any] = seen
    return state


def audit(
    rpc: Any,
    genesis: Any,
    from_height: int,
    state_file: Path | None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Verify every header, commit and link; every log consistency; report evidence."""
    seen = read_audit_state(state_file)
    say = progress or Progress("dpkid audit", quiet=True)
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

    def on_header(hd: Any) -> None:
        hashes[hd.height] = header_hash(hd)
        say(f"verifying headers from genesis: {hd.height}/{head}")

    try:
        trusted = walk_headers(rpc, genesis, head, on_header)
    except VerifyError as exc:
        return {"ok": False, "height": head, "problems": [f"header chain: {exc}"], "findings": []}
    # Block bodies: they must match the verified headers; evidence is reported.
    for h in range(max(1, from_height), head + 1):
        say(f"checking block bodies: {h}/{head}")
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
        write_file(
            state_file,
            json.dumps(
                {
                    "log": {"size": meta.log_size, "root": meta.log_root.hex()},
                    "head": {"height": head, "hash": rpc("block_get", {"height": head})["hash"]},
                }
            ),
            "audit state file",
        )
    say.done(f"audited {head} headers and blocks")
    return {"ok": not problems, "height": head, "problems": problems, "findings": findings}


def cmd_audit(args: argparse.Namespace) -> int:
    genesis = trusted_genesis(args)
    state = Path(args.state) if args.state else None
    read_audit_state(state)  # a bad state file is the user's to fix, before any node is asked
    report = audit(node_call(args), genesis, args.from_height, state, progress_for(args))
    if args.json:
        print_json(report)
    else:
        print(
            f"audited up to height {report['height']}: {'OK' if report['ok'] else 'PROBLEMS FOUND'}"
        )
        for p in report["problems"]:
            print(f"  problem: {p}")
        for f in report["findings"]:
            print(f"  {f}")
    return Exit.OK if report["ok"] else Exit.NO


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


def _known_key(path: str) -> bytes:
    """The SPKI (DER) of a PEM/DER public or private key given as --known-key."""
    from cryptography.hazmat.primitives import serialization

    from dpkid.core.keys import SubjectKeyError, parse_spki

    data = read_bytes(path, "known key")
    pem = b"-----BEGIN" in data
    pub: Any = None
    with contextlib.suppress(Exception):
        pub = (
            serialization.load_pem_public_key(data)
            if pem
            else serialization.load_der_public_key(data)
        )
    if pub is None:
        with contextlib.suppress(Exception):
            priv = (
                serialization.load_pem_private_key(data, password=None)
                if pem
                else serialization.load_der_private_key(data, password=None)
            )
            pub = priv.public_key()
    if pub is None:
        raise UsageError(f"known key {path} is not a public or private key (PEM or DER)")
    der: bytes = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        parse_spki(der)
    except SubjectKeyError as exc:
        raise UsageError(f"known key {path}: not a key dpkid certifies: {exc}") from None
    return der


def _followed(args: argparse.Namespace) -> tuple[list[str], str, Path | None]:
    """(peers, genesis text, home of the followed node if known)."""
    from dpkid.cli.node import peer_id_of
    from dpkid.daemon.config import read_key, read_settings

    home = home_dir(args)
    if args.peer:
        peers = list(args.peer)
        home = None
    elif home is not None:
        require_node_home(home)
        node = Home(home)
        s = read_settings(node.config_file)
        peer_id = peer_id_of(read_key(node.key_file).seed)
        peers = [f"/ip4/{s.listen_host}/tcp/{s.listen_port}/p2p/{peer_id}"]
    else:
        raise UsageError("give --home DIR (or set DPKID_HOME), or --peer MULTIADDR with --genesis")
    if home is None and not args.genesis:
        raise UsageError("with --peer, give the trust root as --genesis FILE")
    path = genesis_path(args)
    load_genesis(path)  # one clear line if it is not a genesis
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:  # pragma: no cover -- read_genesis read it
        raise ConfigError(f"cannot read genesis {path}: {exc}") from None
    return peers, text, home


def cmd_monitor(args: argparse.Namespace) -> int:
    import trio

    from dpkid.core.domains import DomainError, normalize_domain
    from dpkid.core.state.machine import key_cert
    from dpkid.daemon.daemon import NodeDaemon
    from dpkid.daemon.logs import setup_logging
    from dpkid.daemon.rpc_methods import domain_watch_matches

    watched = []
    for d_ in args.domain:
        try:
            watched.append(normalize_domain(d_))
        except DomainError as exc:
            raise UsageError(f"--domain {d_!r}: {exc}") from None
    known = {_known_key(f) for f in args.known_key}
    peers, genesis_text, followed = _followed(args)
    state_dir = Path(args.state_dir)
    try:
        home = _monitor_home(state_dir, genesis_text, peers)
    except OSError as exc:
        raise UsageError(f"cannot write the monitor's --state-dir {state_dir}: {exc}") from None
    setup_logging(args.log_level, "json")
    progress = progress_for(args)

    def emit(obj: dict[str, Any]) -> None:
        if args.json:  # a stream: one JSON object per line
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
        st = d.core.ledger
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

    def target_height() -> int | None:
        """The followed node's height, when it is known (--home): the catch-up target."""
        if followed is None:
            return None
        try:
            from dpkid.client.rpc import SyncClient

            return int(SyncClient(followed, timeout_s=5).status()["height"])
        except Exception:  # progress only: a node that does not answer shows no target
            return None

    async def report_progress() -> None:
        """Catch-up progress on stderr (quiet under --json)."""
        behind = True
        while True:
            await trio.sleep(2)
            st = d.status()
            height = int(st.get("height", 0))
            target = await trio.to_thread.run_sync(target_height)
            if st.get("catching_up") or (target is not None and height < target):
                behind = True
                of = f" of {target}" if target is not None else ""
                progress(f"catching up: height {height}{of}", force=True)
            elif behind:
                behind = False
                progress(f"caught up at height {height}; watching", force=True)

    async def main() -> None:
        try:
            async with trio.open_nursery() as nursery:
                if not progress.quiet:
                    nursery.start_soon(report_progress)
                await d.run()
                nursery.cancel_scope.cancel()
        finally:
            await d.aclose()

    trio.run(main)
    return Exit.OK


def add_parsers(sub: Any) -> None:
    t = add_command(
        sub,
        "tls-check",
        "TLS handshake, then verify the server certificate on the ledger",
        "Connect to a TLS server, check that its certificate names the host (or --name),\n"
        "as a TLS client would, then verify that certificate on the ledger, trusting only\n"
        "the genesis. Exit 0 valid, 1 not valid (names another host, revoked, unknown...),\n"
        "2 no answer could be had, 3 the server did not answer in time.",
    )
    t.add_argument("target", metavar="HOST[:PORT]", help="the TLS server (port default 443)")
    t.add_argument(
        "--name",
        default=None,
        metavar="DOMAIN",
        help="the domain to check, sent as SNI (default: HOST, the host connected to)",
    )
    t.add_argument("--max-age", type=int, default=600, help="reject headers older than this (s)")
    add_trust_args(t)
    t.add_argument(
        "--timeout",
        type=float,
        default=TLS_TIMEOUT_S,
        metavar="S",
        help=f"give the TLS server S seconds, then exit 3 (default {TLS_TIMEOUT_S:g})",
    )
    add_node_args(t, genesis=True)
    t.set_defaults(func=cmd_tls_check)

    a = add_command(
        sub,
        "audit",
        "verify every header, commit, link and log consistency",
        "Re-check everything a node serves: every header and commit from genesis, every\n"
        "block's transactions, and the certificate log, which must extend the one seen by\n"
        "the last audit (--state). Exit 0 no problems, 1 problems found.",
    )
    a.add_argument("--from", dest="from_height", type=int, default=1, metavar="HEIGHT")
    a.add_argument(
        "--state", default=None, metavar="FILE", help="file remembering checkpoints between audits"
    )
    add_node_args(a, genesis=True)
    a.set_defaults(func=cmd_audit)

    m = add_command(
        sub,
        "monitor",
        "watch certificate events for domains as a gossip peer",
        "Join the network as a non-validating peer of the node at --home (or of --peer),\n"
        "sync the chain from genesis, and report every certificate issued, revoked or\n"
        "degraded for the watched domains and their subdomains, until stopped. With --json\n"
        "the events are JSON Lines (one object per line).",
    )
    m.add_argument(
        "--domain",
        action="append",
        required=True,
        metavar="D",
        help="watch this domain and its subdomains (repeat for more)",
    )
    m.add_argument(
        "--known-key",
        action="append",
        default=[],
        metavar="KEY.pem",
        help="a certificate key of yours (PEM/DER, public or private): alert on any other",
    )
    g = m.add_argument_group("node (default: --home $DPKID_HOME)")
    g.add_argument(
        "--home",
        default=None,
        metavar="DIR",
        help="follow the node at this home (its address, and its genesis unless --genesis)",
    )
    g.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="follow this node instead: /ip4/ADDR/tcp/PORT/p2p/PEER_ID (with --genesis)",
    )
    add_genesis_arg(m, g)
    m.add_argument(
        "--state-dir",
        default="dpkid-monitor",
        metavar="DIR",
        help="where the monitor keeps its chain (default ./dpkid-monitor)",
    )
    m.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_json(m)
    m.set_defaults(func=cmd_monitor)
