"""Domain validation never reaches private addresses (SSRF through DNS).

A name whose A record points at 127.0.0.1, 10.x, 169.254.169.254 (a cloud's
metadata service), ... would make every validator fetch from its own private
network. By default the checks refuse such addresses before any connection;
only a node with dv_allow_private_addresses (a local testnet) connects.
Everything runs against a loopback DNS server and listeners this test starts;
nothing asks real DNS, and no check here ever connects outside 127.0.0.1.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dpkid.core.challenges import Challenge, challenge_for
from dpkid.core.crypto import SigningKey
from dpkid.core.keys import spki_der_of
from dpkid.core.types import Application
from dpkid.daemon.dv_checker import (
    FAIL,
    OK,
    CheckConfig,
    CheckResult,
    address_problem,
    check_domain,
    make_resolver,
)
from dpkid.dev.dns_server import DevDnsServer, Zone
from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap

TIMEOUT_S = 2.0
NO_TXT = "dns-01: no TXT record"  # the other method, tried after http-01 failed


class CountingZone(Zone):
    """A zone that counts A lookups per name and can answer a different
    address from the second lookup on: a rebinding DNS server."""

    def __init__(self) -> None:
        super().__init__()
        self.a_lookups: dict[str, int] = {}
        self.rebind_to: dict[str, str] = {}

    def lookup(self, name: str, qtype: str) -> tuple[str, list[str]]:
        n = name.rstrip(".").lower()
        if qtype == "A":
            self.a_lookups[n] = self.a_lookups.get(n, 0) + 1
            if n in self.rebind_to and self.a_lookups[n] > 1:
                return "ok", [self.rebind_to[n]]
        return super().lookup(name, qtype)


@dataclass
class Env:
    zone: CountingZone
    web: ChallengeMap
    dns_addr: str
    http_port: int

    def cfg(self, allow_private: bool) -> CheckConfig:
        return CheckConfig(
            resolver=self.dns_addr,
            http_port=self.http_port,
            dns_timeout_s=TIMEOUT_S,
            http_timeout_s=TIMEOUT_S,
            allow_private_addresses=allow_private,
        )


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    zone, web = CountingZone(), ChallengeMap()
    with DevDnsServer(zone) as dns_srv, ChallengeHttpServer(web) as http_srv:
        yield Env(zone, web, dns_srv.address, http_srv.port)


def _challenge(label: str) -> Challenge:
    key = SigningKey.from_label(f"ssrf-{label}")
    app = Application(
        app_id=bytes(31) + bytes([len(label)]),
        applicant=key.address,
        applicant_pubkey=key.public_key,
        cert_type="DV",
        domains=[f"{label}.test"],
        spki=spki_der_of(Ed25519PrivateKey.generate()),
        validity_days=30,
        org=None,
        escrow=1000,
        created_height=1,
        created_ms=0,
        expires_ms=10**12,
        status="pending",
        attestations=[],
        conflicts=[],
        endorsements=[],
    )
    return challenge_for(app)


def _check(env: Env, domain: str, ch: Challenge, allow_private: bool) -> CheckResult:
    cfg = env.cfg(allow_private)

    async def main() -> CheckResult:
        with trio.fail_after(4 * TIMEOUT_S):  # a refused address is refused at once
            return await check_domain(make_resolver(cfg.resolver), domain, ch, cfg)

    return trio.run(main)


# ------------------------------------------------------------------ the policy


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("127.0.0.1", "is loopback"),
        ("127.8.9.10", "is loopback"),
        ("10.0.0.1", "is private"),
        ("172.16.5.4", "is private"),
        ("192.168.1.1", "is private"),
        ("169.254.169.254", "is link-local"),  # cloud metadata services
        ("100.64.0.1", "shared address space (CGNAT"),
        ("0.0.0.0", "is unspecified"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("224.0.0.251", "is multicast"),
        ("240.0.0.1", "is reserved"),
        ("255.255.255.255", "is reserved"),
        ("192.0.2.7", "is private"),  # documentation (TEST-NET-1)
        ("198.18.0.1", "is private"),  # benchmarking
        ("::1", "is loopback"),
        ("::", "is unspecified"),
        ("fe80::1", "is link-local"),
        ("fc00::1", "is private"),
        ("ff02::1", "is multicast"),
        ("::ffff:10.0.0.1", "maps to 10.0.0.1, which is private"),
        ("::ffff:127.0.0.1", "maps to 127.0.0.1, which is loopback"),
        ("2002:a9fe:a9fe::1", "maps to 169.254.169.254, which is link-local"),  # 6to4
        ("64:ff9b::a00:1", "maps to 10.0.0.1, which is private"),  # NAT64
        ("not-an-ip", "is not an IP address"),
    ],
)
def test_non_public_addresses_are_named_with_the_reason(addr: str, why: str) -> None:
    problem = address_problem(addr)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize(
    "addr", ["8.8.8.8", "93.184.215.14", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_unicast_addresses_are_allowed(addr: str) -> None:
    assert address_problem(addr) is None


# ------------------------------------------------------------------ the checks


def test_a_name_on_a_private_address_fails_without_any_connection(env: Env) -> None:
    # A listener on a loopback address nobody else uses: after the check, its
    # accept queue shows whether the validator connected at all.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(8)
        lsn.setblocking(False)
        ch = _challenge("loopback-web")
        env.zone.set_a("loopback-web.test", ["127.0.0.1"])
        env.web.set("loopback-web.test", ch.token, ch.key_authorization)
        cfg = CheckConfig(
            resolver=env.dns_addr,
            http_port=lsn.getsockname()[1],
            dns_timeout_s=TIMEOUT_S,
            http_timeout_s=TIMEOUT_S,
        )

        async def main() -> CheckResult:
            with trio.fail_after(4 * TIMEOUT_S):
                return await check_domain(make_resolver(cfg.resolver), "loopback-web.test", ch, cfg)

        res = trio.run(main)
        assert res.outcome == FAIL
        assert res.reason == f"http-01: dns: address 127.0.0.1 is loopback; {NO_TXT}"
        with pytest.raises(BlockingIOError):
            lsn.accept()  # nothing ever connected


def test_the_right_answer_on_loopback_passes_only_when_allowed(env: Env) -> None:
    ch = _challenge("served-locally")
    env.zone.set_a("served-locally.test", ["127.0.0.1"])
    env.web.set("served-locally.test", ch.token, ch.key_authorization)
    refused = _check(env, "served-locally.test", ch, allow_private=False)
    assert refused == CheckResult(
        FAIL, "", f"http-01: dns: address 127.0.0.1 is loopback; {NO_TXT}"
    )
    assert _check(env, "served-locally.test", ch, allow_private=True) == CheckResult(
        OK, "http-01", ""
    )


@pytest.mark.parametrize(
    ("ips", "named"),
    [
        (["169.254.169.254"], "169.254.169.254 is link-local"),
        (["10.1.2.3"], "10.1.2.3 is private"),
        (["100.100.100.200"], "100.100.100.200 is shared address space"),
        # One bad record among public ones is enough: DNS servers rotate the
        # order, so the address connected to could be any of them.
        (["8.8.8.8", "192.168.0.10"], "192.168.0.10 is private"),
    ],
)
def test_any_non_public_record_fails_the_http_check(env: Env, ips: list[str], named: str) -> None:
    name = f"ssrf-{len(ips)}-{ips[-1].replace('.', '-')}.test"
    ch = _challenge(name.removesuffix(".test"))
    env.zone.set_a(name, ips)
    res = _check(env, name, ch, allow_private=False)
    assert res.outcome == FAIL and res.method == ""
    assert res.reason.startswith("http-01: dns: address ") and named in res.reason, res.reason


def test_dns01_still_passes_for_a_name_on_a_private_address(env: Env) -> None:
    # dns-01 connects to nothing, so where the name points does not matter.
    ch = _challenge("txt-only")
    env.zone.set_a("txt-only.test", ["10.0.0.1"])
    env.zone.set_txt(ch.dns_name("txt-only.test"), [ch.txt_value])
    assert _check(env, "txt-only.test", ch, allow_private=False) == CheckResult(OK, "dns-01", "")


def test_a_redirect_to_a_metadata_address_is_not_followed(env: Env) -> None:
    ch = _challenge("to-metadata")
    env.zone.set_a("to-metadata.test", ["127.0.0.1"])
    env.web.set_behaviour(
        "to-metadata.test", "redirect", "http://169.254.169.254/latest/meta-data/"
    )
    res = _check(env, "to-metadata.test", ch, allow_private=True)
    assert res == CheckResult(FAIL, "", f"http-01: redirect off the domain; {NO_TXT}")


def test_dns_rebinding_cannot_steer_the_check(env: Env) -> None:
    """The name is resolved once per check; every request of it, redirects
    included, goes to that one checked address, whatever DNS answers later."""
    name = "rebind.test"
    ch = _challenge("rebind")
    env.zone.set_a(name, ["127.0.0.1"])
    env.zone.rebind_to[name] = "127.0.0.2"  # no web server there
    env.web.set_path(name, "/moved/" + ch.token, ch.key_authorization)
    env.web.set_behaviour(name, "redirect", "/moved/" + ch.token)
    before = env.zone.a_lookups.get(name, 0)
    res = _check(env, name, ch, allow_private=True)
    assert res == CheckResult(OK, "http-01", "")
    assert env.zone.a_lookups[name] - before == 1


def test_node_settings_reach_the_checker() -> None:
    """The node's setting, not only CheckConfig, decides (off by default)."""
    from dpkid.daemon.config import NodeSettings
    from dpkid.daemon.dv_checker import DvChecker
    from dpkid.daemon.logs import get_logger

    class _D:
        """The attributes DvChecker reads when it is built."""

        key: Any = None
        core: Any = None
        genesis: Any = None

        def __init__(self, settings: NodeSettings) -> None:
            self.settings = settings
            self.log = get_logger(node="t")

        async def submit_tx(self, raw: bytes) -> Any:
            raise AssertionError("not used")

    assert not DvChecker(_D(NodeSettings())).cfg.allow_private_addresses
    on = NodeSettings(dv_allow_private_addresses=True)
    assert DvChecker(_D(on)).cfg.allow_private_addresses
