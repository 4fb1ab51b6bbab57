"""`dpkid init`, `dpkid testnet`, `dpkid start`, `dpkid rpc`."""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from dpkid.cli.common import (
    Exit,
    UsageError,
    add_command,
    add_json,
    add_node_args,
    json_error_where,
    node_client,
    print_json,
    require_home,
    require_node_home,
)
from dpkid.core.crypto import SigningKey
from dpkid.core.genesis import genesis_to_json
from dpkid.core.types import Genesis, GenesisAccount, GenesisEndorser, GenesisValidator, Policy
from dpkid.daemon.config import (
    ConfigError,
    Home,
    NodeSettings,
    is_testnet_chain_id,
    read_key,
    read_settings,
    settings_to_toml,
    write_key,
)

if TYPE_CHECKING:
    from dpkid.daemon.store import StoreError


def peer_id_of(seed: bytes) -> str:
    """The libp2p peer id a node key gives (identity is the node key)."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58())


def write_rpc_token(home: Path) -> None:
    """The bearer token for the optional TCP RPC listener (mode 0600)."""
    import os

    path = home / "rpc_token"
    if path.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS hands out now; held open together so they do not collide."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cmd_init(args: argparse.Namespace) -> int:
    home = Home(require_home(args))
    if home.key_file.exists() and not args.force:
        raise UsageError(f"{home.key_file} exists; use --force to overwrite it")
    key = SigningKey(secrets.token_bytes(32))
    s = NodeSettings(moniker=args.moniker or home.path.name, listen_port=args.port)
    try:
        write_key(home.key_file, key)
        write_rpc_token(home.path)
        home.data_dir.mkdir(parents=True, exist_ok=True)
        home.config_file.write_text(settings_to_toml(s))
    except OSError as exc:
        raise UsageError(f"cannot write the node home {home.path}: {exc.strerror or exc}") from None
    doc = {
        "home": str(home.path),
        "node_key": str(home.key_file),
        "public_key": key.public_key.hex(),
        "address": key.address.hex(),
        "peer_id": peer_id_of(key.seed),
        "config": str(home.config_file),
        "genesis": str(home.genesis_file),
    }
    if args.json:
        print_json(doc)
        return Exit.OK
    print(f"initialised {home.path}")
    print(f"  node key      {home.key_file} (mode 0600)")
    print(f"  public key    {doc['public_key']}")
    print(f"  address       {doc['address']}")
    print(f"  peer id       {doc['peer_id']}")
    print(f"  config        {home.config_file}")
    print(f"  put the chain's genesis.json at {home.genesis_file}")
    return Exit.OK


def cmd_testnet(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"{out} is not empty; use --force to write into it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror or exc}") from None
    n = args.validators
    vals = [SigningKey(secrets.token_bytes(32)) for _ in range(n)]
    ends = [SigningKey(secrets.token_bytes(32)) for _ in range(args.endorsers)]
    accts = [SigningKey(secrets.token_bytes(32)) for _ in range(args.accounts)]
    ports = free_ports(n + (n if args.metrics else 0))
    policy = Policy()
    if args.application_ttl_ms is not None:
        policy = msgspec.structs.replace(policy, application_ttl_ms=args.application_ttl_ms)
    if args.authz_reuse_ms is not None:
        policy = msgspec.structs.replace(policy, authz_reuse_ms=args.authz_reuse_ms)
    genesis = Genesis(
        chain_id=args.chain_id,
        genesis_time_ms=args.genesis_time_ms
        if args.genesis_time_ms is not None
        else time.time_ns() // 1_000_000,
        validators=[GenesisValidator(k.public_key, 10, f"node{i}") for i, k in enumerate(vals)],
        endorsers=[GenesisEndorser(k.public_key, f"endorser{i}") for i, k in enumerate(ends)],
        accounts=[GenesisAccount(k.address, args.balance) for k in [*accts, *ends, *vals]],
        policy=policy,
    )
    gj = genesis_to_json(genesis)
    (out / "genesis.json").write_text(gj)
    addrs = [f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{peer_id_of(vals[i].seed)}" for i in range(n)]
    for i, k in enumerate(vals):
        home = Home(out / f"node{i}")
        write_key(home.key_file, k, role="validator")
        write_rpc_token(home.path)
        home.data_dir.mkdir(parents=True, exist_ok=True)
        home.genesis_file.write_text(gj)
        s = NodeSettings(
            moniker=f"node{i}",
            listen_port=ports[i],
            peers=[a for j, a in enumerate(addrs) if j != i],
            metrics_listen=f"127.0.0.1:{ports[n + i]}" if args.metrics else "",
            timeout_commit_ms=args.timeout_commit_ms,
            dns_resolver=args.dns_resolver,
            http_port=args.http_port,
            # A local network: its DV test servers (demo, bench net) are on
            # 127.0.0.1. The node accepts this on a testnet chain id only.
            dv_allow_private_addresses=is_testnet_chain_id(args.chain_id),
        )
        home.config_file.write_text(settings_to_toml(s))
    keys = out / "keys"
    for i, k in enumerate(ends):
        write_key(keys / f"endorser{i}.json", k, role="endorser")
    for i, k in enumerate(accts):
        write_key(keys / f"account{i}.json", k, role="account")
    summary = {
        "chain_id": args.chain_id,
        "nodes": [str(out / f"node{i}") for i in range(n)],
        "listen": addrs,
        "endorser_keys": [str(keys / f"endorser{i}.json") for i in range(len(ends))],
        "account_keys": [str(keys / f"account{i}.json") for i in range(len(accts))],
    }
    (out / "testnet.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print_json(summary)
    else:
        print(f"wrote a {n}-validator testnet to {out} (chain {args.chain_id})")
        for i in range(n):
            print(f"  node{i}: {addrs[i]}")
        print(f"  {len(ends)} endorser keys and {len(accts)} account keys in {keys}")
        print(f"start each with: dpkid start --home {out}/node0  (and node1 ...)")
    return 0


def _store_error(exc: BaseException) -> StoreError | None:
    """The StoreError that stopped the node, however deep trio's groups nest it."""
    from dpkid.daemon.store import StoreError

    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _store_error(sub)
            if found is not None:
                return found
    return None


def cmd_start(args: argparse.Namespace) -> int:
    import sqlite3

    import trio

    from dpkid.daemon.daemon import NodeDaemon
    from dpkid.daemon.logs import setup_logging
    from dpkid.daemon.store import as_store_error

    home = require_home(args)
    require_node_home(home)
    # --json: logs as JSON lines (on stderr) and errors as one JSON document.
    log_format = args.log_format or ("json" if args.json else None)
    try:
        settings = read_settings(Home(home).config_file)
        setup_logging(args.log_level or settings.log_level, log_format or settings.log_format)
        read_key(Home(home).key_file)
        daemon = NodeDaemon(home)
    except sqlite3.Error as exc:
        # The store turns its own failures into StoreError; this catches any
        # path it missed, so a bad store never ends in a traceback.
        raise UsageError(str(as_store_error(Home(home).db_file, "opening", exc))) from None
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        # StoreError (a RuntimeError) lands here: its message is one line that
        # names the file and the way out.
        raise UsageError(str(exc)) from None

    async def main() -> None:
        try:
            await daemon.run()
        finally:
            await daemon.aclose()

    try:
        trio.run(main)
    except BaseException as exc:
        # A block the node applied but could not store (save_block) stops it:
        # running on with the store behind the node is never safe.
        err = _store_error(exc)
        if err is None:
            raise
        raise UsageError(f"stopped: {err}") from None
    return Exit.OK


def cmd_rpc(args: argparse.Namespace) -> int:
    try:
        params: Any = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"PARAMS {args.params[:60]!r} are not JSON ({json_error_where(exc)}); "
            """give an object such as '{"height": 1}'"""
        ) from None
    if not isinstance(params, (dict, list)):
        raise UsageError(f"PARAMS must be a JSON object or array, not {args.params[:60]!r}")
    print_json(node_client(args).call(args.method, params))
    return Exit.OK


def _home_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--home", metavar="DIR", default=None, help=f"{help} (default $DPKID_HOME)")


def add_parsers(sub: Any) -> None:
    p = add_command(sub, "init", "create one node's home: key (0600), config, data dir")
    _home_arg(p, "the node home to create")
    p.add_argument("--moniker", default="", help="the node's name (default: the home's name)")
    p.add_argument("--port", type=int, default=26656, help="the p2p listen port")
    p.add_argument("--force", action="store_true", help="overwrite an existing node key")
    add_json(p)
    p.set_defaults(func=cmd_init)

    t = add_command(sub, "testnet", "write a ready local network of N validators")
    t.add_argument("--validators", type=int, default=4)
    t.add_argument("--endorsers", type=int, default=3)
    t.add_argument("--accounts", type=int, default=4)
    t.add_argument("--balance", type=int, default=10_000_000)
    t.add_argument("--chain-id", default="dpkid-testnet")
    t.add_argument("--genesis-time-ms", type=int, default=None, help="default: now")
    t.add_argument("--timeout-commit-ms", type=int, default=NodeSettings().timeout_commit_ms)
    t.add_argument("--metrics", action="store_true", help="give each node a Prometheus port")
    t.add_argument(
        "--application-ttl-ms", type=int, default=None, help="genesis policy (default 7 days)"
    )
    t.add_argument(
        "--authz-reuse-ms",
        type=int,
        default=None,
        help="genesis policy: how long a valid authorization serves (default 30 days)",
    )
    t.add_argument(
        "--dns-resolver",
        default="none",
        help='HOST:PORT every node\'s DV checks ask, or "system"; default "none": a local '
        "testnet's validators check no domains (attest by hand)",
    )
    t.add_argument("--http-port", type=int, default=80, help="port the http-01 checks connect to")
    t.add_argument("--out", required=True, metavar="DIR", help="where to write the network")
    t.add_argument("--force", action="store_true", help="write into a directory that is not empty")
    add_json(t)
    t.set_defaults(func=cmd_testnet)

    s = add_command(sub, "start", "run a node until SIGINT/SIGTERM")
    _home_arg(s, "the node home")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    s.add_argument("--log-format", choices=["json", "console", "auto"], default=None)
    s.add_argument(
        "--json",
        action="store_true",
        help="log JSON lines (unless --log-format) and report a failure to start as JSON",
    )
    s.set_defaults(func=cmd_start)

    r = add_command(
        sub,
        "rpc",
        "call a JSON-RPC method on a node and print the result",
        "Call one JSON-RPC method (protocol/RPC.md) and print its result as JSON. A node's\n"
        "error reply is exit status 1 (2 for an unknown method or bad params).",
    )
    r.add_argument("method", metavar="METHOD")
    r.add_argument("params", metavar="PARAMS", nargs="?", default="", help="a JSON object")
    add_node_args(r)
    r.set_defaults(func=cmd_rpc)
