"""`dpkid acme serve | eab | eab-revoke`: the ACME server and the grants that
bind ACME accounts to dpkid accounts (SPEC §7.10, README "ACME")."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from dpkid.cli.common import (
    EXIT_HELP,
    Exit,
    UsageError,
    add_command,
    add_node_args,
    home_dir,
    load_genesis,
    node_client,
    parse_host_port,
)
from dpkid.cli.roles import (
    Ctx,
    _account_key,
    _connection,
    _group,
    _hex_id,
    _leaf,
    _positive,
    _read_account_key,
    _tx_opts,
)

DEFAULT_SPEND_LIMIT: Final = 100_000
DEFAULT_GRANT_DAYS: Final = 365
MAX_INFO_BYTES: Final = 64 * 1024


def _server_info(url: str, timeout_s: float) -> dict[str, Any]:
    """The ACME server's delegate key, from its /dpkid document."""
    base = url.rstrip("/").removesuffix("/directory")
    try:
        with urllib.request.urlopen(f"{base}/dpkid", timeout=timeout_s) as r:
            info: dict[str, Any] = json.loads(r.read(MAX_INFO_BYTES))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UsageError(f"--server {url}: cannot read {base}/dpkid: {e}") from None
    if not isinstance(info, dict) or "delegate_pubkey" not in info:
        raise UsageError(f"--server {url}: {base}/dpkid is not a dpkid ACME server's")
    return info


def cmd_acme_eab(ctx: Ctx) -> int:
    from dpkid.acme.server import seal_eab_key
    from dpkid.core.crypto import sha256
    from dpkid.core.state.grants import GRANT_TAG
    from dpkid.core.types import MAX_GRANT_DAYS, GrantCreate

    a = ctx.args
    if a.days > MAX_GRANT_DAYS:
        raise UsageError(f"--days: at most {MAX_GRANT_DAYS}")
    key = _read_account_key(a.account_key)
    chain = ctx.client().chain_id()
    info = _server_info(a.server, min(ctx.timeout(), 30.0))
    if info.get("chain_id") != chain:
        raise UsageError(
            f"the ACME server is on chain {info.get('chain_id')!r}, the node on {chain!r}"
        )
    delegate = bytes.fromhex(_hex_id(info["delegate_pubkey"], 32, "the server's delegate key"))
    mac_key = os.urandom(32)
    body = GrantCreate(delegate, a.spend_limit, a.days, seal_eab_key(delegate, mac_key))
    h = ctx.send(key, body)
    res = ctx.commit(h)
    grant_id = sha256(GRANT_TAG + bytes.fromhex(h)).hex()
    from dpkid.acme.server import _b64

    hmac_b64 = _b64(mac_key)
    directory = a.server.rstrip("/")
    if not directory.endswith("/directory"):
        directory += "/directory"
    certbot = (
        f"certbot certonly --server {directory} --eab-kid {grant_id} "
        f"--eab-hmac-key {hmac_b64} -d NAME ..."
    )
    ctx.emit(
        {
            "grant_id": grant_id,
            "eab_kid": grant_id,
            "eab_hmac_key": hmac_b64,
            "delegate_pubkey": delegate.hex(),
            "spend_limit": a.spend_limit,
            "valid_days": a.days,
            "tx_hash": h,
            "height": res["height"],
            "directory": directory,
            "certbot": certbot,
        },
        [
            f"grant {grant_id} at height {res['height']}: the ACME server may spend up to "
            f"{a.spend_limit} of account {key.address.hex()} for {a.days} days",
            f"  EAB key id:   {grant_id}",
            f"  EAB MAC key:  {hmac_b64}",
            f"  {certbot}",
            f"end it at any time with: dpkid acme eab-revoke {grant_id} --account-key ...",
        ],
    )
    return Exit.OK


def cmd_acme_eab_revoke(ctx: Ctx) -> int:
    from dpkid.core.types import GrantRevoke

    a = ctx.args
    key = _read_account_key(a.account_key)
    gid = _hex_id(a.grant_id, 32, "GRANT_ID")
    h = ctx.send(key, GrantRevoke(bytes.fromhex(gid)))
    res = ctx.commit(h)
    ctx.emit(
        {"grant_id": gid, "tx_hash": h, "height": res["height"], "status": "revoked"},
        [f"grant {gid} revoked at height {res['height']}"],
    )
    return Exit.OK


def cmd_acme_serve(args: argparse.Namespace) -> int:
    import signal

    import trio

    from dpkid.acme.server import ServerConfig, serve
    from dpkid.cli.common import require_home

    if getattr(args, "rpc", None):
        raise UsageError("acme serve talks to the node's local socket: give --home or --socket")
    host, port = parse_host_port(args.listen, "--listen")
    home = home_dir(args)
    if home is None and not args.socket:
        home = require_home(args)
    node_client(args).call("status")  # the node is up: else the usual "cannot reach" error
    genesis = Path(args.genesis) if args.genesis else (home / "genesis.json" if home else None)
    if genesis is None or not genesis.exists():
        raise UsageError(f"no genesis file {genesis}: give --genesis (the chain's genesis.json)")
    policy = load_genesis(genesis).policy
    state_dir = Path(args.state) if args.state else (home / "acme" if home else Path("acme"))
    base = args.base_url or f"http://{host}:{port}"
    cfg = ServerConfig(
        base_url=base.rstrip("/"),
        node_home=home,
        rpc_socket=args.socket,
        state_dir=state_dir,
        policy=policy,
        validity_days=args.validity_days,
    )

    async def main() -> None:
        async with trio.open_nursery() as n:
            server = await n.start(serve, cfg, host, port)
            print(
                json.dumps(
                    {
                        "directory": f"{cfg.base_url}/directory",
                        "chain_id": server.ledger.chain_id,
                        "delegate_pubkey": server.key.public_key.hex(),
                        "state_dir": str(state_dir),
                    }
                )
                if args.json
                else f"ACME directory {cfg.base_url}/directory (chain {server.ledger.chain_id}, "
                f"delegate key {server.key.public_key.hex()})",
                flush=True,
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    n.cancel_scope.cancel()
                    break

    trio.run(main)
    return Exit.OK


def add_parsers(sub: Any) -> None:
    ss = _group(sub, "acme", "an ACME (RFC 8555) server for certbot and other ACME clients")
    p = add_command(
        ss,
        "serve",
        "serve ACME on HOST:PORT for a node (its socket), until SIGTERM or Ctrl-C",
        "Run an RFC 8555 ACME server (with RFC 9773 renewal information) in front of a\n"
        "node. Accounts need External Account Binding: `dpkid acme eab` makes a ledger\n"
        "grant from the user's dpkid account to this server's key and prints the EAB\n"
        "key id and MAC key for the client. The server keeps its key and records in\n"
        "--state (default HOME/acme).",
    )
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--base-url", default=None, metavar="URL", help="default http://HOST:PORT")
    p.add_argument("--state", default=None, metavar="DIR", help="default HOME/acme")
    p.add_argument(
        "--genesis", default=None, metavar="FILE", help="default HOME/genesis.json (its policy)"
    )
    p.add_argument(
        "--validity-days",
        type=_positive,
        default=90,
        metavar="N",
        help="certificate lifetime asked for (at most the policy's; default 90)",
    )
    add_node_args(p)
    p.set_defaults(func=cmd_acme_serve)
    p.epilog = EXIT_HELP

    p = _leaf(
        ss,
        "eab",
        cmd_acme_eab,
        "let an ACME server act for a dpkid account; print the EAB key id and MAC key",
        "Make a ledger grant (SPEC section 7.10) from the account to the ACME server's\n"
        "key, with a fresh EAB MAC key sealed to that key, and print the certbot options\n"
        "--eab-kid and --eab-hmac-key. Certificates the server gets are the account's;\n"
        "the account pays, up to --spend-limit.",
    )
    p.add_argument("--server", required=True, metavar="URL", help="the ACME server's directory URL")
    p.add_argument(
        "--spend-limit",
        type=_positive,
        default=DEFAULT_SPEND_LIMIT,
        metavar="N",
        help="most the server may spend of the account, fees and escrow"
        f" (default {DEFAULT_SPEND_LIMIT})",
    )
    p.add_argument(
        "--days",
        type=_positive,
        default=DEFAULT_GRANT_DAYS,
        metavar="D",
        help=f"how long the grant lasts, at most 366 (default {DEFAULT_GRANT_DAYS})",
    )
    _account_key(p, "the dpkid account that will own and pay")
    _tx_opts(p)
    _connection(p)

    p = _leaf(
        ss, "eab-revoke", cmd_acme_eab_revoke, "end a grant: the ACME server can no longer act"
    )
    p.add_argument("grant_id", metavar="GRANT_ID")
    _account_key(p, "the grant's owner")
    _tx_opts(p)
    _connection(p)
