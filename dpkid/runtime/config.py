"""A node's home directory: key, config (TOML), genesis (JSON), data.

HOME/
  node_key.json   the Ed25519 seed (mode 0600); the node's validator key and libp2p identity
  config.toml     listen address, peers, RPC socket, timeouts, metrics, logging
  genesis.json    the chain's genesis, identical on every node
  data/           the SQLite store
  dpkid.sock      the JSON-RPC socket (mode 0600), while the node runs
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dpkid.crypto import SigningKey, address_of
from dpkid.types import (
    Genesis,
    GenesisAccount,
    GenesisEndorser,
    GenesisValidator,
    Policy,
)

KEY_FILE = "node_key.json"
CONFIG_FILE = "config.toml"
GENESIS_FILE = "genesis.json"
SOCKET_FILE = "dpkid.sock"
DATA_DIR = "data"


class ConfigError(ValueError):
    pass


# ------------------------------------------------------------------ keys


def write_key(path: Path, key: SigningKey, role: str = "node") -> None:
    data = {
        "type": "ed25519",
        "role": role,
        "seed": key.seed.hex(),
        "public_key": key.public_key.hex(),
        "address": key.address.hex(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with 0600 from the start, so the secret is never world-readable.
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.chmod(path, 0o600)


def read_key(path: Path) -> SigningKey:
    try:
        data = json.loads(path.read_text())
        key = SigningKey(bytes.fromhex(data["seed"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read key {path}: {exc}") from None
    if data.get("public_key") and data["public_key"] != key.public_key.hex():
        raise ConfigError(f"key {path}: public_key does not match the seed")
    return key


# ------------------------------------------------------------------ genesis JSON


def genesis_to_json(g: Genesis) -> str:
    doc = {
        "chain_id": g.chain_id,
        "genesis_time_ms": g.genesis_time_ms,
        "validators": [
            {
                "pubkey": v.pubkey.hex(),
                "address": address_of(v.pubkey).hex(),
                "power": v.power,
                "name": v.name,
            }
            for v in g.validators
        ],
        "endorsers": [
            {"pubkey": e.pubkey.hex(), "address": address_of(e.pubkey).hex(), "name": e.name}
            for e in g.endorsers
        ],
        "accounts": [{"address": a.address.hex(), "balance": a.balance} for a in g.accounts],
        "policy": {name: getattr(g.policy, name) for name in Policy.__struct_fields__},
    }
    return json.dumps(doc, indent=2) + "\n"


def genesis_from_json(text: str) -> Genesis:
    try:
        d = json.loads(text)
        pol = d.get("policy", {})
        unknown = set(pol) - set(Policy.__struct_fields__)
        if unknown:
            raise ConfigError(f"unknown policy fields: {sorted(unknown)}")
        g = Genesis(
            chain_id=d["chain_id"],
            genesis_time_ms=int(d["genesis_time_ms"]),
            validators=[
                GenesisValidator(bytes.fromhex(v["pubkey"]), int(v["power"]), v.get("name", ""))
                for v in d["validators"]
            ],
            endorsers=[
                GenesisEndorser(bytes.fromhex(e["pubkey"]), e["name"]) for e in d["endorsers"]
            ],
            accounts=[
                GenesisAccount(bytes.fromhex(a["address"]), int(a["balance"]))
                for a in d["accounts"]
            ],
            policy=Policy(**pol),
        )
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"bad genesis: {exc}") from None
    # Round-trip through the canonical codec so every bound is checked.
    from dpkid import codec

    try:
        return codec.decode(codec.encode(g), Genesis)
    except codec.DecodeError as exc:
        raise ConfigError(f"bad genesis: {exc}") from None


# ------------------------------------------------------------------ node config


@dataclass
class NodeSettings:
    moniker: str = "node"
    listen_host: str = "127.0.0.1"
    listen_port: int = 26656
    peers: list[str] = field(default_factory=list)  # libp2p multiaddrs with /p2p/<id>
    rpc_socket: str = SOCKET_FILE  # relative to home
    rpc_tcp: str = ""  # "127.0.0.1:PORT" to also listen on TCP (bearer token in HOME/rpc_token)
    metrics_listen: str = ""  # "127.0.0.1:PORT" to serve Prometheus text; empty = off
    log_level: str = "info"
    log_format: str = "auto"  # "json" | "console" | "auto" (console on a TTY)
    timeout_propose_ms: int = 1_000
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 500
    timeout_prevote_delta_ms: int = 250
    timeout_precommit_ms: int = 500
    timeout_precommit_delta_ms: int = 250
    timeout_commit_ms: int = 300
    gossip_interval_ms: int = 500
    max_block_txs: int = 2_000
    mempool_max_txs: int = 50_000
    # DNS server the domain-validation checks ask: "HOST:PORT" (tests, demo), "" or
    # "system" = the system resolver, "none" = this validator performs no DV checks.
    dns_resolver: str = ""
    http_port: int = 80  # port the http-01 check connects to
    # FAULT INJECTION FOR TESTS ONLY: "approve_all" | "reject_all" makes this validator
    # attest every application without checking (a lying vantage point). Keep "" on real nodes.
    dv_fault: str = ""


def settings_to_toml(s: NodeSettings) -> str:
    out = ["# dpkid node configuration", "[node]"]
    for k, v in asdict(s).items():
        out.append(f"{k} = {_toml_value(v)}")
    return "\n".join(out) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def read_settings(path: Path) -> NodeSettings:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    node = data.get("node", {})
    known = {f.name for f in fields(NodeSettings)}
    unknown = set(node) - known
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
    try:
        return NodeSettings(**node)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass
class Home:
    path: Path

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def genesis_file(self) -> Path:
        return self.path / GENESIS_FILE

    @property
    def data_dir(self) -> Path:
        return self.path / DATA_DIR

    @property
    def db_file(self) -> Path:
        return self.data_dir / "dpkid.sqlite"

    def socket_path(self, s: NodeSettings) -> Path:
        p = Path(s.rpc_socket)
        return p if p.is_absolute() else self.path / p
