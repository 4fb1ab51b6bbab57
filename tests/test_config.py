"""config.toml: written by a real TOML writer, read through a typed schema.

Every bad value gets one clear ConfigError naming the field; nothing else
escapes (a traceback from `dpkid start` is a bug).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from dpkid.daemon.config import (
    ConfigError,
    NodeSettings,
    read_genesis,
    read_settings,
    settings_to_toml,
)

FIELDS = [f.name for f in fields(NodeSettings)]
toml_values = st.recursive(
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(FIELDS), value=toml_values)
def test_any_value_of_any_field_is_accepted_or_named(
    tmp_path_factory: pytest.TempPathFactory, name: str, value: Any
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_text(tomli_w.dumps({"node": {name: value}}))
    try:
        s = read_settings(path)
    except ConfigError as exc:
        msg = str(exc)
        assert f"node.{name}" in msg and "\n" not in msg
        return
    assert getattr(s, name) == value


@settings(max_examples=100, deadline=None)
@given(moniker=st.text(min_size=1, max_size=60).filter(lambda t: "\x00" not in t))
def test_written_config_reads_back_for_any_moniker(
    tmp_path_factory: pytest.TempPathFactory, moniker: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    s = NodeSettings(moniker=moniker, peers=["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWx"])
    path.write_text(settings_to_toml(s))
    assert read_settings(path) == s


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('listen_port = "abc"', "node.listen_port: expected an integer, got 'abc'"),
        ("listen_port = 70000", "node.listen_port = 70000: expected a port 0-65535"),
        ('dns_resolver = "8.8.8.8"', "node.dns_resolver = '8.8.8.8': expected HOST:PORT"),
        ('log_level = "loud"', "node.log_level = 'loud': expected one of debug"),
        ('metrics_listen = "0.0.0.0:9100"', "must be a loopback address"),
        ('peers = ["127.0.0.1:26656"]', "not a multiaddr with /p2p/"),
        ("timeout_commit_ms = -1", "expected milliseconds"),
        ("mystery = 1", "unknown setting node.mystery"),
    ],
)
def test_each_mistake_gets_one_line_naming_it(tmp_path: Path, body: str, says: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[node]\n" + body + "\n")
    with pytest.raises(ConfigError) as info:
        read_settings(path)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_not_toml_and_unknown_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"[node\n\xff")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        read_settings(path)
    path.write_text("[nodes]\nmoniker = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown table \[nodes\]"):
        read_settings(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_settings(tmp_path / "missing.toml")


def test_defaults_are_the_engines_and_the_nodes() -> None:
    """Every default lives once: the file repeats TimeoutConfig and NodeConfig."""
    from dpkid.core.consensus.engine import TimeoutConfig
    from dpkid.core.node.core import NodeConfig
    from dpkid.sim.settings import Scenario

    s = NodeSettings()
    assert s.node_config() == NodeConfig()
    assert s.timeout_commit_ms == TimeoutConfig().commit_ms == Scenario().timeout_commit_ms
    assert s.gossip_interval_ms == NodeConfig().gossip_interval_ms == Scenario().gossip_interval_ms
    assert asdict(s).keys() == {f.name for f in fields(NodeSettings)}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not JSON (line 1, column 1)"),
        ("[]", "not a JSON object"),
        ('{"genesis_time_ms": 1}', "missing field 'chain_id'"),
        ('{"chain_id": "c", "genesis_time_ms": "x", "validators": []}', "wrong value"),
        ('{"chain_id": "c", "policy": 3}', '"policy" is not an object'),
    ],
)
def test_bad_genesis_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "genesis.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_genesis(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and says in msg, msg
    assert "KeyError" not in msg and "Expecting" not in msg
