"""A node's home directory: key, config (TOML), genesis (JSON), data.

HOME/
  node_key.json   the Ed25519 seed (mode 0600); the node's validator key and libp2p identity
  config.toml     listen address, peers, RPC socket, timeouts, metrics, logging
  genesis.json    the chain's genesis, identical on every node
  data/           the SQLite store
  dpkid.sock      the JSON-RPC socket (mode 0600), while the node runs
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Final

import tomli_w

from dpkid.core.consensus.engine import TimeoutConfig
from dpkid.core.crypto import SigningKey
from dpkid.core.genesis import GenesisError, genesis_from_json
from dpkid.core.node.byzantine import BAD_SHARES, EQUIVOCATE
from dpkid.core.node.core import NodeConfig
from dpkid.core.types import (
    Genesis,
)

KEY_FILE = "node_key.json"
CONFIG_FILE = "config.toml"
GENESIS_FILE = "genesis.json"
SOCKET_FILE = "dpkid.sock"
DATA_DIR = "data"
DB_FILE = "dpkid.sqlite"


class ConfigError(ValueError):
    """A home's file is missing or wrong; ``str()`` is one line naming it."""


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
    """A dpkid key file (as ``write_key`` writes it); ConfigError says, in one
    line, what is wrong with which file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"key file {path} is not a dpkid key file: it is not text") from None
    if text.lstrip().startswith("-----BEGIN"):
        raise ConfigError(
            f'key file {path} is a PEM file, not a dpkid key file (JSON with a "seed")'
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"key file {path} is not JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"key file {path} is not a dpkid key file: it is not a JSON object")
    if "seed" not in data:
        raise ConfigError(f'key file {path} is not a dpkid key file: it has no "seed"')
    seed = data["seed"]
    try:
        raw = bytes.fromhex(seed) if isinstance(seed, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f'key file {path}: "seed" is not 64 hex digits')
    key = SigningKey(raw)
    if data.get("public_key") and data["public_key"] != key.public_key.hex():
        raise ConfigError(f'key file {path}: "public_key" does not match the "seed"')
    return key


# ------------------------------------------------------------------ node config

# Every default lives once: the consensus timeouts in TimeoutConfig, the node's
# own limits in NodeConfig; the config file only repeats them.
_T = TimeoutConfig()
_N = NodeConfig()
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")
DV_FAULTS: Final = ("", "approve_all", "reject_all")
MAX_PEERS: Final = 1_000
MAX_SETTING_CHARS: Final = 4_096
RPC_TCP_HOSTS: Final = ("127.0.0.1", "::1")  # the hosts serve_tcp listens on
# A genesis whose chain id ends so is a testnet one (`dpkid testnet`'s default
# chain id is "dpkid-testnet"): only there are settings for local test setups
# accepted (dv_allow_private_addresses).
TESTNET_CHAIN_ID_SUFFIX: Final = "testnet"
TEST_BYZANTINE_MODES: Final = ("", EQUIVOCATE, BAD_SHARES)
# A day either way: enough to put a node's clock far off the others, small
# enough that every timestamp stays a positive U64 of milliseconds.
MAX_TEST_CLOCK_OFFSET_MS: Final = 86_400_000


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
    timeout_propose_ms: int = _T.propose_ms
    timeout_propose_delta_ms: int = _T.propose_delta_ms
    timeout_prevote_ms: int = _T.prevote_ms
    timeout_prevote_delta_ms: int = _T.prevote_delta_ms
    timeout_precommit_ms: int = _T.precommit_ms
    timeout_precommit_delta_ms: int = _T.precommit_delta_ms
    timeout_commit_ms: int = _T.commit_ms
    gossip_interval_ms: int = _N.gossip_interval_ms
    max_block_txs: int = _N.max_block_txs
    max_block_weight: int = _N.max_block_weight
    mempool_max_txs: int = _N.mempool_max_txs
    # DNS server the domain-validation checks ask: "HOST:PORT" (tests, demo), "" or
    # "system" = the system resolver, "none" = this validator performs no DV checks.
    dns_resolver: str = ""
    http_port: int = 80  # port the http-01 check connects to
    # FAULT INJECTION FOR TESTS ONLY: "approve_all" | "reject_all" makes this validator
    # attest every application without checking (a lying vantage point). Keep "" on real nodes.
    dv_fault: str = ""
    # Let the DV checks connect to loopback, private, link-local, ... addresses
    # (dv_checker.address_problem). Off, a name pointed at 10.0.0.1 or 127.0.0.1
    # fails its check: SSRF through DNS is a known attack on ACME validators. Only
    # accepted with a testnet genesis (is_testnet_chain_id): `dpkid testnet` sets
    # it, since its test DNS and web servers run on 127.0.0.1.
    dv_allow_private_addresses: bool = False
    # TEST ONLY, accepted only with a testnet genesis (check_settings_for_genesis).
    # "equivocate": this validator signs a conflicting proposal whenever it proposes
    # and a conflicting vote beside each vote of its own it sends (CONSENSUS.md §7).
    test_byzantine: str = ""
    # TEST ONLY, likewise: added to this node's wall clock (the times in its votes,
    # mempool and watchdog), to run it with a skewed clock (CONSENSUS.md §5.3).
    test_clock_offset_ms: int = 0

    def node_config(self) -> NodeConfig:
        return NodeConfig(
            timeouts=TimeoutConfig(
                self.timeout_propose_ms,
                self.timeout_propose_delta_ms,
                self.timeout_prevote_ms,
                self.timeout_prevote_delta_ms,
                self.timeout_precommit_ms,
                self.timeout_precommit_delta_ms,
                self.timeout_commit_ms,
            ),
            max_block_txs=self.max_block_txs,
            max_block_weight=self.max_block_weight,
            gossip_interval_ms=self.gossip_interval_ms,
            mempool_max_txs=self.mempool_max_txs,
        )


def settings_to_toml(s: NodeSettings) -> str:
    return "# dpkid node configuration\n" + tomli_w.dumps({"node": asdict(s)})


def _host_port(v: str, loopback_only: bool = False) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected HOST:PORT with a port 1-65535"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"{host!r} is not an IP address"
    if loopback_only and not ip.is_loopback:
        return "must be a loopback address (127.0.0.1 or ::1); put a proxy in front for more"
    return None


def _check(name: str, v: Any) -> str | None:
    """Why value ``v`` is not acceptable for setting ``name``, or None."""
    if name in ("listen_port", "http_port"):
        return None if 0 <= v <= 65535 else "expected a port 0-65535"
    if name.startswith("timeout_") or name == "gossip_interval_ms":
        return None if 0 <= v <= 3_600_000 else "expected milliseconds, 0 to 3600000"
    if name in ("max_block_txs", "max_block_weight", "mempool_max_txs"):
        return None if 1 <= v <= 10_000_000 else "expected a count, 1 to 10000000"
    if name == "log_level":
        return None if v in LOG_LEVELS else f"expected one of {', '.join(LOG_LEVELS)}"
    if name == "log_format":
        return None if v in LOG_FORMATS else f"expected one of {', '.join(LOG_FORMATS)}"
    if name == "test_byzantine":
        return (
            None if v in TEST_BYZANTINE_MODES else f'expected "", "{EQUIVOCATE}" or "{BAD_SHARES}"'
        )
    if name == "test_clock_offset_ms":
        lim = MAX_TEST_CLOCK_OFFSET_MS
        return None if -lim <= v <= lim else f"expected milliseconds, -{lim} to {lim}"
    if name == "dv_fault":
        return None if v in DV_FAULTS else 'expected "", "approve_all" or "reject_all"'
    if name == "listen_host":
        try:
            ipaddress.ip_address(v)
        except ValueError:
            return "expected an IP address to listen on"
        return None
    if name == "metrics_listen" and v:
        return _host_port(v, loopback_only=True)
    if name == "rpc_tcp" and v:
        # The bearer token travels in clear text, so the TCP RPC never leaves the
        # machine; there is no opt-in (protocol/RPC.md §1.2).
        if v.rpartition(":")[0].strip("[]") not in RPC_TCP_HOSTS:
            return "must be 127.0.0.1:PORT or [::1]:PORT; put a TLS proxy in front for more"
        return _host_port(v)
    if name == "dns_resolver" and v not in ("", "system", "none"):
        return _host_port(v) and 'expected HOST:PORT, "system" or "none"'
    if name == "peers":
        if len(v) > MAX_PEERS:
            return f"at most {MAX_PEERS} peers"
        bad = [p for p in v if "/p2p/" not in p or not p.startswith("/")]
        return f"not a multiaddr with /p2p/<peer id>: {bad[0]!r}" if bad else None
    if name in ("moniker", "rpc_socket") and not v:
        return "must not be empty"
    return None


_TYPES: Final = {"str": str, "int": int, "bool": bool, "list[str]": list}


def settings_from_dict(node: Any, where: str) -> NodeSettings:
    """The typed schema: one clear error per field, never a traceback."""
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: [node] must be a table")
    known = {f.name: f for f in fields(NodeSettings)}
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting node.{unknown[0]} (known: {', '.join(known)})")
    for name, v in node.items():
        want = str(known[name].type)
        typ = _TYPES[want]
        ok = isinstance(v, typ) and (typ is bool or not isinstance(v, bool))
        if ok and want == "list[str]":
            ok = all(isinstance(x, str) for x in v)
        if ok and isinstance(v, str) and len(v) > MAX_SETTING_CHARS:
            raise ConfigError(f"{where}: node.{name}: longer than {MAX_SETTING_CHARS} characters")
        if not ok:
            shown = repr(v) if len(repr(v)) < 80 else repr(v)[:77] + "..."
            kind = {
                "str": "a string",
                "int": "an integer",
                "bool": "true or false",
                "list[str]": "a list of strings",
            }[want]
            raise ConfigError(f"{where}: node.{name}: expected {kind}, got {shown}")
        why = _check(name, v)
        if why:
            raise ConfigError(f"{where}: node.{name} = {v!r}: {why}")
    return NodeSettings(**node)


def is_testnet_chain_id(chain_id: str) -> bool:
    """A chain of local test setups (`dpkid testnet`, the demo, the bench net)."""
    return chain_id.endswith(TESTNET_CHAIN_ID_SUFFIX)


def check_settings_for_genesis(s: NodeSettings, genesis: Genesis, where: str) -> None:
    """Refuse test-only settings on a chain that is not a testnet: a config
    copied from a test setup must not weaken a real validator."""
    if s.dv_allow_private_addresses and not is_testnet_chain_id(genesis.chain_id):
        raise ConfigError(
            f"{where}: node.dv_allow_private_addresses = true is only accepted on a testnet "
            f"(a chain id ending in {TESTNET_CHAIN_ID_SUFFIX!r}), not on chain "
            f"{genesis.chain_id!r}: it lets domain validation reach private addresses"
        )
    # A misbehaving validator or a lying clock must never reach a real network
    # by a stray line of config.
    for name in ("test_byzantine", "test_clock_offset_ms"):
        v = getattr(s, name)
        if v and not is_testnet_chain_id(genesis.chain_id):
            raise ConfigError(
                f"{where}: node.{name} = {v!r} is only accepted on a testnet (a chain id "
                f"ending in {TESTNET_CHAIN_ID_SUFFIX!r}, as `dpkid testnet` writes), not on "
                f"chain {genesis.chain_id!r}: it is a test-only fault; remove it"
            )


def read_settings(path: Path) -> NodeSettings:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"node"})
    if extra:
        raise ConfigError(f"{path}: unknown table [{extra[0]}] (only [node])")
    return settings_from_dict(data.get("node", {}), str(path))


class _InHome:
    """A path inside the home directory, named by its fixed file name."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, home: Home, owner: type[Home] | None = None) -> Path:
        return home.path.joinpath(*self.parts)


@dataclass
class Home:
    path: Path

    key_file: ClassVar[_InHome] = _InHome(KEY_FILE)
    config_file: ClassVar[_InHome] = _InHome(CONFIG_FILE)
    genesis_file: ClassVar[_InHome] = _InHome(GENESIS_FILE)
    data_dir: ClassVar[_InHome] = _InHome(DATA_DIR)
    db_file: ClassVar[_InHome] = _InHome(DATA_DIR, DB_FILE)

    def socket_path(self, s: NodeSettings) -> Path:
        p = Path(s.rpc_socket)
        return p if p.is_absolute() else self.path / p


def read_genesis(path: Path) -> Genesis:
    """Read and check ``path``; ConfigError names the file and what is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read genesis {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"genesis {path} is not UTF-8 text") from None
    try:
        return genesis_from_json(text)
    except GenesisError as exc:
        raise ConfigError(f"genesis {path}: {exc}") from None
