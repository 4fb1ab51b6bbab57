"""Domain-validation checks (dpkid/daemon/dv_checker.py) against loopback servers.

A test DNS server and a challenge web server run in threads on 127.0.0.1;
nothing here asks real DNS or the internet. Each outcome of the checks is
exercised, including hostile responders, with a bound on how long a check may
take. The DvChecker itself is driven in-process against a DevChain.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.resolver
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dpkid.cli.node import free_ports
from dpkid.core import codec
from dpkid.core.challenges import Challenge, challenge_for
from dpkid.core.crypto import SignatureCache, SigningKey
from dpkid.core.keys import spki_der_of
from dpkid.core.node.effects import TxVerdict
from dpkid.core.node.mempool import Mempool
from dpkid.core.state.codes import Code
from dpkid.core.types import Application, Attestation, CertApply, DvAttest, Receipt, decode_tx
from dpkid.daemon.dv_checker import (
    FAIL,
    OK,
    UNREACHABLE,
    CheckConfig,
    CheckResult,
    DvChecker,
    check_application,
    check_dns01,
    check_domain,
    make_resolver,
    split_for_tx,
)
from dpkid.daemon.logs import get_logger
from dpkid.dev.devchain import DevChain
from dpkid.dev.dns_server import DevDnsServer, Zone
from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap

HTTP_TIMEOUT_S = 2.0
DNS_TIMEOUT_S = 2.0


@dataclass
class Env:
    zone: Zone
    http: ChallengeMap
    dns_addr: str
    http_port: int
    closed_port: int

    def cfg(self, **kw: Any) -> CheckConfig:
        base: dict[str, Any] = {
            "resolver": self.dns_addr,
            "http_port": self.http_port,
            "dns_timeout_s": DNS_TIMEOUT_S,
            "http_timeout_s": HTTP_TIMEOUT_S,
            # The test servers are on 127.0.0.1 (tests/test_dv_address_policy.py
            # covers the default, which refuses such addresses).
            "allow_private_addresses": True,
        }
        base.update(kw)
        return CheckConfig(**base)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    zone = Zone()
    cmap = ChallengeMap()
    closed = free_ports(1)[0]
    with DevDnsServer(zone) as dns_srv, ChallengeHttpServer(cmap) as http_srv:
        yield Env(zone, cmap, dns_srv.address, http_srv.port, closed)


_counter = [0]


def _app(domains: list[str], seed: int | None = None) -> Application:
    _counter[0] += 1
    key = SigningKey.from_label(f"dv-applicant-{seed if seed is not None else _counter[0]}")
    app_id = bytes([_counter[0] % 256]) * 31 + bytes([seed or 0])
    return Application(
        app_id=app_id,
        applicant=key.address,
        applicant_pubkey=key.public_key,
        cert_type="DV",
        domains=domains,
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


def _run_app(env: Env, app: Application, **kw: Any) -> tuple[CheckResult, float]:
    cfg = env.cfg(**kw)

    async def main() -> CheckResult:
        r = make_resolver(cfg.resolver, cfg.dns_timeout_s)
        return await check_application(r, app.domains, challenge_for(app), cfg)

    t0 = time.monotonic()
    res = trio.run(main)
    return res, time.monotonic() - t0


def _run_domain(env: Env, domain: str, ch: Challenge, **kw: Any) -> tuple[CheckResult, float]:
    cfg = env.cfg(**kw)

    async def main() -> CheckResult:
        return await check_domain(make_resolver(cfg.resolver, cfg.dns_timeout_s), domain, ch, cfg)

    t0 = time.monotonic()
    res = trio.run(main)
    return res, time.monotonic() - t0


def _serve_http(env: Env, domain: str, app: Application) -> Challenge:
    ch = challenge_for(app)
    env.zone.set_a(domain, ["127.0.0.1"])
    env.http.set(domain, ch.token, ch.key_authorization + "\n")
    return ch


# ------------------------------------------------------------------ successes


def test_http01_ok(env: Env) -> None:
    app = _app(["http-ok.test"])
    _serve_http(env, "http-ok.test", app)
    res, _ = _run_app(env, app)
    assert res == CheckResult(OK, "http-01", "")


def test_dns01_ok_even_without_a_web_server(env: Env) -> None:
    app = _app(["dns-ok.test"])
    ch = challenge_for(app)
    env.zone.set_a("dns-ok.test", ["127.0.0.1"])  # the web server answers 404 for this host
    env.zone.set_txt(ch.dns_name("dns-ok.test"), ["unrelated", ch.txt_value])
    res, _ = _run_app(env, app)
    assert res.outcome == OK and res.method == "dns-01"


def test_mixed_methods_attest_dns01(env: Env) -> None:
    app = _app(["mix-a.test", "mix-b.test"])
    ch = _serve_http(env, "mix-a.test", app)
    env.zone.set_txt(ch.dns_name("mix-b.test"), [ch.txt_value])
    res, _ = _run_app(env, app)
    assert res.outcome == OK and res.method == "dns-01"


def test_wildcard_needs_dns01_http_is_not_accepted(env: Env) -> None:
    app = _app(["*.wild.test"])
    ch = _serve_http(env, "wild.test", app)  # a perfect http-01 answer for the base name
    res, _ = _run_app(env, app)
    assert res.outcome == FAIL and "no TXT record" in res.reason
    env.zone.set_txt(ch.dns_name("*.wild.test"), [ch.txt_value])
    res, _ = _run_app(env, app)
    assert res == CheckResult(OK, "dns-01", "")


def test_same_domain_redirect_is_followed(env: Env) -> None:
    app = _app(["moved.test"])
    ch = challenge_for(app)
    env.zone.set_a("moved.test", ["127.0.0.1"])
    env.http.set_path("moved.test", "/elsewhere/" + ch.token, ch.key_authorization)
    env.http.set_behaviour("moved.test", "redirect", "/elsewhere/" + ch.token)
    res, _ = _run_app(env, app)
    assert res == CheckResult(OK, "http-01", "")


# ------------------------------------------------------------------ definitive failures


def test_wrong_token_fails(env: Env) -> None:
    app, other = _app(["wrong.test"]), _app(["wrong.test"])
    ch = challenge_for(app)
    env.zone.set_a("wrong.test", ["127.0.0.1"])
    # The key authorization of another application, at this one's path.
    env.http.set("wrong.test", ch.token, challenge_for(other).key_authorization)
    env.zone.set_txt(ch.dns_name("wrong.test"), [challenge_for(other).txt_value])
    res, _ = _run_app(env, app)
    assert res.outcome == FAIL
    assert "not the key authorization" in res.reason and "does not match" in res.reason


def test_missing_txt_fails(env: Env) -> None:
    app = _app(["*.notxt.test"])
    env.zone.set_a("notxt.test", ["127.0.0.1"])

    async def main() -> CheckResult:
        cfg = env.cfg()
        return await check_dns01(make_resolver(cfg.resolver), "*.notxt.test", challenge_for(app), 1)

    assert trio.run(main).outcome == FAIL
    res, _ = _run_app(env, app)
    assert res.outcome == FAIL and res.reason == "*.notxt.test: dns-01: no TXT record"


def test_not_found_and_server_error_fail(env: Env) -> None:
    app = _app(["status.test"])
    env.zone.set_a("status.test", ["127.0.0.1"])
    res, _ = _run_app(env, app)
    assert res.outcome == FAIL and "HTTP status 404" in res.reason
    env.http.set_behaviour("status.test", "status", "500")
    res, _ = _run_app(env, app)
    assert res.outcome == FAIL and "HTTP status 500" in res.reason


@pytest.mark.parametrize(
    ("behaviour", "arg", "why"),
    [
        ("wrong_body", "", "not the key authorization"),
        ("garbage", "", "malformed HTTP"),
        ("oversized", "", "too large"),
        ("unsized", "", "too large"),
        ("hangup", "", "malformed HTTP"),
        ("slowloris", "", "too slow"),
        ("redirect", "http://evil.test/.well-known/dpki-challenge/x", "off the domain"),
        ("redirect", "https://{host}/x", "off the domain"),
        ("redirect", "http://{host}:1/x", "off the domain"),
        ("redirect", "/loop", "too many redirects"),
    ],
)
def test_hostile_responders_fail_within_the_timeout(
    env: Env, behaviour: str, arg: str, why: str
) -> None:
    host = f"{behaviour}-{zlib.crc32(arg.encode()) % 100_000}.test"
    app = _app([host])
    ch = _serve_http(env, host, app)
    env.http.remove(host)
    env.http.set_behaviour(host, behaviour, arg.format(host=host))
    res, took = _run_domain(env, host, ch)
    # dns-01 is tried too (no record here), so the reason names both methods.
    assert res.outcome == FAIL, res
    assert why in res.reason, res.reason
    assert took < 2 * HTTP_TIMEOUT_S + 1.0, f"{behaviour} took {took:.2f} s"


# ------------------------------------------------------------------ unreachable


def test_nxdomain_is_unreachable(env: Env) -> None:
    res, _ = _run_app(env, _app(["nowhere.test"]))
    assert res.outcome == UNREACHABLE and "NXDOMAIN" in res.reason


def test_wildcard_of_a_missing_zone_is_unreachable(env: Env) -> None:
    res, _ = _run_app(env, _app(["*.nozone.test"]))
    assert res.outcome == UNREACHABLE and "NXDOMAIN" in res.reason


def test_connection_refused_is_unreachable(env: Env) -> None:
    app = _app(["refused.test"])
    _serve_http(env, "refused.test", app)
    res, took = _run_app(env, app, http_port=env.closed_port)
    assert res.outcome == UNREACHABLE and "cannot connect" in res.reason
    assert took < 2 * HTTP_TIMEOUT_S


def test_dns_timeout_and_servfail_are_unreachable(env: Env) -> None:
    env.zone.set_mode("silent.test", "drop")
    env.zone.set_mode("broken.test", "servfail")
    res, took = _run_app(env, _app(["silent.test"]))
    assert res.outcome == UNREACHABLE and "timeout" in res.reason
    assert took < 2 * DNS_TIMEOUT_S + 1.0
    res, _ = _run_app(env, _app(["broken.test"]))
    assert res.outcome == UNREACHABLE and "SERVFAIL" in res.reason


def test_application_fail_beats_unreachable_and_unreachable_beats_ok(env: Env) -> None:
    app = _app(["agg-ok.test", "agg-gone.test"])
    _serve_http(env, "agg-ok.test", app)
    res, _ = _run_app(env, app)
    assert res.outcome == UNREACHABLE and res.reason.startswith("agg-gone.test:")
    app2 = _app(["agg-bad.test", "agg-gone.test", "agg-ok2.test"])
    _serve_http(env, "agg-ok2.test", app2)
    env.zone.set_a("agg-bad.test", ["127.0.0.1"])
    res, _ = _run_app(env, app2)
    assert res.outcome == FAIL and res.reason.startswith("agg-bad.test:")
    assert len(res.reason) <= 120


# ------------------------------------------------------------------ the servers as processes


def _read_listen_line(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line.startswith("listening "), line
    return line.split()[1]


def test_servers_as_processes_reload_their_files(tmp_path: Path) -> None:
    zone_file, map_file = tmp_path / "zone.json", tmp_path / "map.json"
    Zone.write_file(zone_file, {"a.test": {"A": ["127.0.0.1"]}})
    ChallengeMap.write_file(map_file, {})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", mod, "--port", "0", flag, str(f)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for mod, flag, f in [
            ("dpkid.dev.dns_server", "--zone", zone_file),
            ("dpkid.dev.http_server", "--map", map_file),
        ]
    ]
    try:
        dns_addr = _read_listen_line(procs[0])
        http_port = int(_read_listen_line(procs[1]).rsplit(":", 1)[1])
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = int(dns_addr.rsplit(":", 1)[1])
        r.lifetime = 2
        assert [a.to_text() for a in r.resolve("a.test", "A")] == ["127.0.0.1"]
        app = _app(["b.test"])
        ch = challenge_for(app)
        Zone.write_file(
            zone_file,
            {"a.test": {"A": ["127.0.0.1"]}, "b.test": {"A": ["127.0.0.1"]}},
        )
        ChallengeMap.write_file(
            map_file, {"b.test": {"paths": {ch.http_path: ch.key_authorization}}}
        )
        cfg = CheckConfig(
            resolver=dns_addr, http_port=http_port, http_timeout_s=2, allow_private_addresses=True
        )

        async def check() -> CheckResult:
            return await check_application(make_resolver(dns_addr), ["b.test"], ch, cfg)

        deadline = time.monotonic() + 10
        res = trio.run(check)
        while not res.ok and time.monotonic() < deadline:
            time.sleep(0.2)
            res = trio.run(check)
        assert res == CheckResult(OK, "http-01", "")
        # A bad file keeps the previous zone.
        zone_file.write_text("{not json")
        time.sleep(0.5)
        assert [a.to_text() for a in r.resolve("b.test", "A")] == ["127.0.0.1"]
        assert json.loads(map_file.read_text())["b.test"]["paths"]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()


# ------------------------------------------------------------------ the checker, in-process


@dataclass
class _Settings:
    dns_resolver: str
    http_port: int


@dataclass
class _Core:
    chain: DevChain
    key: SigningKey
    mempool: Mempool

    @property
    def ledger(self) -> Any:
        return self.chain.state

    def next_nonce(self, address: bytes) -> int:
        acct = self.chain.state.account(address)
        n: int = acct.nonce if acct else 0
        while n in self.mempool.by_sender.get(address, {}):
            n += 1
        return n

    @property
    def is_validator(self) -> bool:
        return self.chain.state.validators.power_of(self.key.address) > 0


@dataclass
class _Block:
    receipts: list[Receipt]


@dataclass
class _FakeDaemon:
    """Just what DvChecker uses of a NodeDaemon, over a DevChain."""

    chain: DevChain
    key: SigningKey
    settings: _Settings
    core: _Core = field(init=False)
    submitted: list[bytes] = field(default_factory=list)
    reject_next: list[Code] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.core = _Core(self.chain, self.key, Mempool(self.chain.chain_id, SignatureCache()))
        self.genesis = self.chain.genesis
        self.log = get_logger(node=self.key.address.hex()[:8])

    async def submit_tx(self, raw: bytes) -> TxVerdict:
        if self.reject_next:
            return TxVerdict(self.reject_next.pop(0), "injected", b"")
        code, why, h = self.core.mempool.add(raw, self.chain.state)
        if code == Code.OK:
            self.submitted.append(raw)
        return TxVerdict(code, why, h)


def _items(d: _FakeDaemon) -> list[Attestation]:
    out: list[Attestation] = []
    for raw in d.submitted:
        body = decode_tx(raw).body
        assert isinstance(body, DvAttest)
        out += body.items
    return out


def _apply(chain: DevChain, daemons: list[_FakeDaemon]) -> list[Receipt]:
    for d in daemons:
        for raw in d.submitted:
            chain.raw(raw)
        d.submitted.clear()
    receipts = chain.block()
    for d in daemons:
        d.core.mempool.update(chain.blocks[-1][1], chain.state)
    return receipts


def test_checkers_attest_in_batches_and_the_chain_decides(env: Env) -> None:
    chain = DevChain.create()
    keys = chain.keys
    settings = _Settings(env.dns_addr, env.http_port)
    daemons = [_FakeDaemon(chain, k, settings) for k in keys.validators]
    checkers = [
        DvChecker(
            d,
            env.cfg(fail_grace_s=0, http_timeout_s=5, dns_timeout_s=3),
            fault="approve_all" if i == 0 else "",
        )
        for i, d in enumerate(daemons)
    ]
    spki = spki_der_of(Ed25519PrivateKey.generate())
    good = [f"batch{i}.test" for i in range(3)]
    for name in good:
        env.zone.set_a(name, ["127.0.0.1"])
    app_ids: dict[str, bytes] = {}
    for name in [*good, "bogus.test"]:
        chain.tx(keys.accounts[0], CertApply("DV", [name], spki, 30, 1000))
    receipts = chain.block()
    for name, r in zip([*good, "bogus.test"], receipts, strict=True):
        assert r.code == 0, r.log
        app_ids[name] = next(e.ref for e in r.events if e.kind == "app_created")
    for name in good:
        app = chain.state.application(app_ids[name])
        assert app is not None
        ch = challenge_for(app)
        env.http.set(name, ch.token, ch.key_authorization)
    env.zone.set_a("bogus.test", ["127.0.0.1"])  # 404: a definitive failure
    daemons[3].reject_next = [Code.BAD_NONCE]  # the first submit races: resync once

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for c in checkers:
                await nursery.start(c.run)
            for c in checkers:
                c.on_block(_Block(receipts))
            with trio.fail_after(20):
                while any(len(_items(d)) < 4 for d in daemons):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Results are batched (how many per tx depends on when checks finish);
    # each validator's txs use consecutive nonces and the minimum fee.
    for d in daemons:
        assert sorted(i.app_id for i in _items(d)) == sorted(app_ids.values())
        txs = [decode_tx(raw) for raw in d.submitted]
        assert [t.nonce for t in txs] == list(range(len(txs)))
        assert all(t.fee == chain.state.policy.min_tx_fee for t in txs)
    out = _apply(chain, daemons)
    assert all(r.code == 0 for r in out), [r.log for r in out]
    for name in good:
        app = chain.state.application(app_ids[name])
        assert app is not None
        assert app.status == "issued", (name, app.attestations)
    bogus = chain.state.application(app_ids["bogus.test"])
    assert bogus is not None and bogus.status == "rejected"
    lie = [a for a in bogus.attestations if a.validator == keys.validators[0].address]
    assert lie and lie[0].ok  # the lying vantage point was outvoted
    # Nonces follow the committed state plus the mempool.
    assert checkers[1].next_nonce() == len(daemons[1].core.mempool.by_sender) + (
        chain.state.account(keys.validators[1].address).nonce  # type: ignore[union-attr]
    )


def _check_until_attested(
    checker: DvChecker, d: _FakeDaemon, receipts: list[Receipt], n: int
) -> None:
    """Run one checker on a block's receipts until it has attested ``n`` items."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(checker.run)
            checker.on_block(_Block(receipts))
            with trio.fail_after(20):
                while len(_items(d)) < n:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_many_results_are_batched_64_per_transaction(env: Env) -> None:
    chain = DevChain.create()
    keys = chain.keys
    d = _FakeDaemon(chain, keys.validators[0], _Settings(env.dns_addr, env.http_port))
    checker = DvChecker(d, env.cfg(), fault="approve_all")  # instant "checks"
    spki = spki_der_of(Ed25519PrivateKey.generate())
    for i in range(100):
        chain.tx(keys.accounts[i % 4], CertApply("DV", [f"many{i}.test"], spki, 30, 1000))
    receipts = chain.block()
    assert all(r.code == 0 for r in receipts)

    _check_until_attested(checker, d, receipts, 100)
    txs = [decode_tx(raw) for raw in d.submitted]
    assert [len(t.body.items) for t in txs] == [64, 36]  # type: ignore[union-attr]
    assert [t.nonce for t in txs] == [0, 1]
    out = _apply(chain, [d])
    assert all(r.code == 0 for r in out)


def test_a_burst_beyond_the_queue_is_checked_from_the_ledger(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More new applications than the queue holds: none is lost, the rest are
    found in the ledger's pending list once the queue has room."""
    import dpkid.daemon.dv_checker as dvc

    monkeypatch.setattr(dvc, "QUEUE_SIZE", 8)
    monkeypatch.setattr(dvc, "RESCAN_MAX", 16)
    monkeypatch.setattr(dvc, "RESCAN_INTERVAL_S", 0.05)
    chain = DevChain.create()
    keys = chain.keys
    d = _FakeDaemon(chain, keys.validators[0], _Settings(env.dns_addr, env.http_port))
    checker = DvChecker(d, env.cfg(), fault="approve_all")
    spki = spki_der_of(Ed25519PrivateKey.generate())
    for i in range(60):
        chain.tx(keys.accounts[i % 4], CertApply("DV", [f"burst{i}.test"], spki, 30, 1000))
    receipts = chain.block()
    app_ids = [next(e.ref for e in r.events if e.kind == "app_created") for r in receipts]

    _check_until_attested(checker, d, receipts, 60)
    assert sorted(i.app_id for i in _items(d)) == sorted(app_ids)  # each once
    assert checker.stats["deferred"] >= 60 - 8  # the burst did overflow the queue


def test_a_failure_is_attested_only_after_the_grace_period(env: Env) -> None:
    chain = DevChain.create()
    keys = chain.keys
    d = _FakeDaemon(chain, keys.validators[0], _Settings(env.dns_addr, env.http_port))
    checker = DvChecker(d, env.cfg(fail_grace_s=2.5, http_timeout_s=5, dns_timeout_s=3))
    spki = spki_der_of(Ed25519PrivateKey.generate())
    chain.tx(keys.accounts[0], CertApply("DV", ["late.test"], spki, 30, 1000))
    chain.tx(keys.accounts[0], CertApply("DV", ["never.test"], spki, 30, 1000))
    receipts = chain.block()
    late_id, never_id = (next(e.ref for e in r.events if e.kind == "app_created") for r in receipts)
    late = chain.state.application(late_id)
    assert late is not None
    env.zone.set_a("late.test", ["127.0.0.1"])
    env.zone.set_a("never.test", ["127.0.0.1"])  # 404 for ever

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            await nursery.start(checker.run)
            t0 = trio.current_time()
            checker.on_block(_Block(receipts))
            await trio.sleep(0.5)
            assert d.submitted == []  # both fail so far: nothing attested yet
            ch = challenge_for(late)
            env.http.set("late.test", ch.token, ch.key_authorization)  # published late
            with trio.fail_after(15):
                while len(_items(d)) < 2:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
            return trio.current_time() - t0

    took = trio.run(main)
    items = {i.app_id: i for i in _items(d)}
    assert items[late_id].ok and items[late_id].method == "http-01"
    assert not items[never_id].ok and "HTTP status 404" in items[never_id].reason
    assert 2.5 <= took < 10


def test_checker_skips_non_validators_own_and_closed_applications(env: Env) -> None:
    chain = DevChain.create()
    keys = chain.keys
    settings = _Settings(env.dns_addr, env.http_port)
    outsider = _FakeDaemon(chain, keys.accounts[1], settings)
    own = _FakeDaemon(chain, keys.validators[1], settings)
    spki = spki_der_of(Ed25519PrivateKey.generate())
    chain.tx(keys.validators[1], CertApply("DV", ["own.test"], spki, 30, 1000))
    receipts = chain.block()
    off = _FakeDaemon(chain, keys.validators[2], settings)
    c_out, c_own = DvChecker(outsider, env.cfg(), "approve_all"), DvChecker(own, env.cfg())
    c_off = DvChecker(off, env.cfg(resolver="none"))  # a validator with DV checks off
    assert not c_off.enabled

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for c in (c_out, c_own, c_off):
                await nursery.start(c.run)
                c.on_block(_Block(receipts))
            c_own.on_block(object())  # garbage in a listener is logged, never raised
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert outsider.submitted == [] and own.submitted == [] and off.submitted == []


def test_split_for_tx_respects_size_and_count() -> None:
    items = [Attestation(bytes([i]) * 32, False, "http-01", "x" * 120) for i in range(150)]

    def enc(chunk: list[Attestation]) -> bytes:
        return codec.encode(DvAttest(chunk))

    chunks = split_for_tx(items, enc, limit=4000)
    assert [i for c in chunks for i in c] == items
    assert all(1 <= len(c) <= 64 and len(enc(c)) <= 4000 for c in chunks)
    assert [len(c) for c in split_for_tx(items, enc)] == [64, 64, 22]


def test_bad_fault_mode_and_resolver_spec_are_refused(env: Env) -> None:
    chain = DevChain.create()
    d = _FakeDaemon(chain, chain.keys.validators[0], _Settings(env.dns_addr, env.http_port))
    with pytest.raises(ValueError):
        DvChecker(d, env.cfg(), fault="sometimes")
    with pytest.raises(ValueError):
        make_resolver("no-port")
