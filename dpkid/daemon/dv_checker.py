"""Domain validation from many vantage points (SPEC §7.3): the validator side.

Every validator performs the http-01 / dns-01 challenges of each new
application itself, over its own network path, and attests the outcome on
chain with a `dv_attest` transaction. The chain issues when validators
holding more than 2/3 of the power attested success, so a few lying or
misled vantage points can neither issue nor block a certificate.

Runtime code (network I/O, clocks): it lives beside the daemon, never in the
pure core. Every outcome of a check is one of

* ``ok``          a method proved control of the name;
* ``fail``        a definitive failure: wrong body, bad status, oversized,
                  garbage, too slow, off-domain redirect, TXT missing or wrong,
                  or a name whose address is not public (``address_problem``).
                  Attested once it persists past a short grace period
                  (CheckConfig.fail_grace_s), since an applicant can only
                  publish the challenge once the application is on chain;
* ``unreachable`` the name itself does not resolve (NXDOMAIN, SERVFAIL, DNS
                  timeout) or its server refuses or times out the connection.
                  Not attested: retried with backoff until the application
                  closes or expires (then the chain refunds it).

SSRF through DNS (a name pointed at 127.0.0.1, 10.x, 169.254.169.254, ...) is
a known attack on ACME validators: it would make every validator fetch from
its own private network. So an http-01 check connects only to a public
unicast address: every A record of the name is checked with
``address_problem`` before any connection, and the connection goes to exactly
the checked address (an IP literal, never re-resolved, also after a
redirect), so DNS rebinding between the check and the connect cannot happen.
Only a node with ``dv_allow_private_addresses`` (a local testnet whose test
DNS and web servers run on 127.0.0.1) skips this.

Everything is bounded: the queue of new applications, the applications
tracked at once, the checks in flight, each check's time, the retries, and
the results waiting to be batched into transactions.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol
from urllib.parse import urljoin, urlsplit

import dns.asyncresolver
import dns.exception
import dns.resolver
import h11
import trio

from dpkid.core.challenges import (
    MAX_HTTP_BODY_BYTES,
    Challenge,
    base_name,
    challenge_for,
    challenge_for_authz,
)
from dpkid.core.node.effects import TxVerdict
from dpkid.core.state.authz import authorized, authz_status, key_authz
from dpkid.core.state.codes import Code
from dpkid.core.types import (
    MAX_ATTESTATIONS_PER_TX,
    MAX_TX_BYTES,
    Application,
    Attestation,
    Authorization,
    AuthzAttest,
    AuthzCheck,
    DvAttest,
    encode_tx,
    sign_tx,
)

OK: Final = "ok"
FAIL: Final = "fail"
UNREACHABLE: Final = "unreachable"

DV_FAULTS: Final = ("", "approve_all", "reject_all")

QUEUE_SIZE: Final = 1024  # new applications waiting to be tracked
MAX_TRACKED: Final = 512  # applications being checked or waiting for a retry
MAX_IN_FLIGHT: Final = 8  # domain checks running at once
MAX_RESULTS: Final = 4096  # finished results waiting to be submitted
RESCAN_INTERVAL_S: Final = 1.0  # with a backlog: how often to look for room in the queue
RESCAN_MAX: Final = 4 * QUEUE_SIZE  # pending applications read from the ledger per scan
MAX_ATTEMPTS: Final = 256  # checks of one application (with backoff: days at the 60 s cap)
BACKOFF_START_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
BATCH_DELAY_S: Final = 0.25  # gather results this long before one transaction
MAX_REASON: Final = 120
REMEMBER_SUBMITTED: Final = 10_000
REDIRECT_CODES: Final = (301, 302, 303, 307, 308)
MAX_HTTP_HEADER_BYTES: Final = 16 * 1024  # a challenge response's status line and headers
RECV_CHUNK_BYTES: Final = 16 * 1024


@dataclass(frozen=True)
class CheckResult:
    outcome: str  # ok | fail | unreachable
    method: str = ""  # the method that passed ("http-01" | "dns-01"), or ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == OK


def _ok(method: str) -> CheckResult:
    return CheckResult(OK, method)


def _fail(reason: str) -> CheckResult:
    return CheckResult(FAIL, "", reason)


def _unreachable(reason: str) -> CheckResult:
    return CheckResult(UNREACHABLE, "", reason)


@dataclass(frozen=True)
class CheckConfig:
    resolver: str = ""  # "host:port" of the only DNS server asked; "" = the system's
    http_port: int = 80
    dns_timeout_s: float = 3.0
    http_timeout_s: float = 5.0  # connect + request + whole body, per attempt
    max_redirects: int = 2
    # A failure is only attested once it has lasted this long since the first
    # check: the applicant learns the application id (and so the challenge)
    # only once the application is on chain, and needs a moment to publish.
    fail_grace_s: float = 15.0
    # Connect to loopback/private/... addresses too. Only for a local testnet,
    # whose test servers are on 127.0.0.1 (NodeSettings.dv_allow_private_addresses).
    allow_private_addresses: bool = False


def make_resolver(spec: str, timeout_s: float = 3.0) -> dns.asyncresolver.Resolver:
    """A stub resolver that asks exactly the configured server ("host:port"),
    or the system's resolvers when `spec` is "" or "system"."""
    if spec in ("", "system"):
        try:
            r = dns.asyncresolver.Resolver()
        except dns.exception.DNSException:  # no resolv.conf: every lookup is unreachable
            r = dns.asyncresolver.Resolver(configure=False)
    else:
        host, sep, port = spec.rpartition(":")
        if not sep or not host:
            raise ValueError(f"dns_resolver must be host:port, not {spec!r}")
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [host.strip("[]")]
        r.port = int(port)
    r.timeout = min(timeout_s, 1.5)
    r.lifetime = timeout_s
    r.cache = None
    return r


# ------------------------------------------------------------------ addresses

# Not covered by ipaddress's is_private in Python 3.11, or worth naming on their own.
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
_SHARED_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes `ip` unfit to connect to from a validator, or None if it is
    a public unicast address. The first matching reason is the most specific."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _THIS_NETWORK:
        return "in 0.0.0.0/8 (this network)"
    if ip in _SHARED_CGNAT:
        return "shared address space (CGNAT, 100.64.0.0/10)"
    if ip.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


def address_problem(addr: str) -> str | None:
    """Why a domain-validation check must not connect to `addr` (one line,
    e.g. "address 10.0.0.1 is private"), or None for a public unicast address.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, Teredo,
    NAT64) is judged by the IPv4 address it reaches as well, since a
    connection to it may end there."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return f"address {addr[:60]!r} is not an IP address"
    inner: ipaddress.IPv4Address | None = None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            inner = ip.sixtofour
        elif ip.teredo is not None:
            inner = ip.teredo[1]  # the client; the server half is Teredo's relay
        elif ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if inner is not None:
        why = _kind(inner)
        if why is not None:
            return f"address {ip} maps to {inner}, which is {why}"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # Exactly that public IPv4 address (Python 3.11 calls all of
            # ::ffff:0:0/96 private, so the IPv6 form must not be judged).
            return None
    why = _kind(ip)
    return None if why is None else f"address {ip} is {why}"


def forbidden_address(ips: Sequence[str], cfg: CheckConfig) -> CheckResult | None:
    """A `fail` if any of a name's addresses is not public (and the node does
    not allow that), else None. Any, not just the one connected to: DNS
    servers rotate the order of records, so the address used could change."""
    if cfg.allow_private_addresses:
        return None
    for ip in ips:
        why = address_problem(ip)
        if why is not None:
            # "dns": the ACME problem type for a name that resolves wrongly.
            return _fail(f"dns: {why}")
    return None


# ------------------------------------------------------------------ DNS


async def resolve_a(
    resolver: dns.asyncresolver.Resolver, name: str, timeout_s: float
) -> tuple[list[str], CheckResult | None]:
    """The A records of `name`, or an `unreachable` result saying why there are none."""
    try:
        ans = await resolver.resolve(name, "A", lifetime=timeout_s, search=False)
    except dns.resolver.NXDOMAIN:
        return [], _unreachable("does not resolve (NXDOMAIN)")
    except dns.resolver.NoAnswer:
        return [], _unreachable("no A record")
    except dns.exception.Timeout:
        return [], _unreachable(f"DNS timeout for {name}")
    except dns.resolver.NoNameservers:
        return [], _unreachable(f"DNS SERVFAIL for {name}")
    except dns.exception.DNSException as exc:
        return [], _unreachable(f"DNS error for {name}: {type(exc).__name__}")
    ips = [r.address for r in ans]
    if not ips:
        return [], _unreachable("no A record")
    return ips, None


async def name_exists(
    resolver: dns.asyncresolver.Resolver, name: str, timeout_s: float
) -> CheckResult | None:
    """None if the name exists (with or without an A record), else `unreachable`."""
    try:
        await resolver.resolve(name, "A", lifetime=timeout_s, search=False)
    except dns.resolver.NoAnswer:
        return None
    except dns.resolver.NXDOMAIN:
        return _unreachable("does not resolve (NXDOMAIN)")
    except dns.exception.Timeout:
        return _unreachable(f"DNS timeout for {name}")
    except dns.exception.DNSException as exc:
        return _unreachable(f"DNS error for {name}: {type(exc).__name__}")
    return None


async def check_dns01(
    resolver: dns.asyncresolver.Resolver, domain: str, ch: Challenge, timeout_s: float
) -> CheckResult:
    """dns-01: a TXT record at _dpki-challenge.<base domain> holds the TXT value."""
    name = ch.dns_name(domain)
    try:
        ans = await resolver.resolve(name, "TXT", lifetime=timeout_s, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return _fail("no TXT record")
    except dns.exception.Timeout:
        return _unreachable(f"DNS timeout for {name}")
    except dns.exception.DNSException as exc:
        return _unreachable(f"DNS error for {name}: {type(exc).__name__}")
    for rd in ans:
        try:
            value = b"".join(rd.strings).decode("ascii").strip()
        except UnicodeDecodeError:
            continue
        if value == ch.txt_value:
            return _ok("dns-01")
    return _fail("TXT record does not match")


# ------------------------------------------------------------------ HTTP


async def check_http01(
    resolver: dns.asyncresolver.Resolver,
    domain: str,
    ch: Challenge,
    cfg: CheckConfig,
) -> CheckResult:
    """http-01: GET http://<domain>:<port>/.well-known/dpki-challenge/<token>
    from the domain's own A record; the body must be the key authorization."""
    host = base_name(domain)
    ips, err = await resolve_a(resolver, host, cfg.dns_timeout_s)
    if err is not None:
        return err
    refused = forbidden_address(ips, cfg)
    if refused is not None:
        return refused
    # Every request of this check (redirects included) goes to this checked
    # literal address: nothing is resolved again, so DNS rebinding has no window.
    ip = ips[0]
    phase = ["connect"]
    with trio.move_on_after(cfg.http_timeout_s) as scope:
        try:
            return await _http_fetch(ip, host, ch, cfg, phase)
        except OSError as exc:
            if phase[0] == "connect":
                return _unreachable(f"cannot connect to {ip}:{cfg.http_port}: {_short(exc)}")
            return _fail(f"HTTP error {type(exc).__name__}")
        except h11.ProtocolError:
            return _fail("malformed HTTP response")
        except trio.BrokenResourceError:
            return _fail("HTTP error: connection reset")
    assert scope.cancelled_caught
    if phase[0] == "connect":
        return _unreachable(f"connect to {ip}:{cfg.http_port} timed out")
    return _fail(f"response too slow (over {cfg.http_timeout_s:g} s)")


def _short(exc: BaseException) -> str:
    s = str(exc) or type(exc).__name__
    return s[:60]


@dataclass(frozen=True)
class _HttpReply:
    """What one GET returned: a status, the Location header, and the body (or
    ``None`` when it was over MAX_HTTP_BODY_BYTES)."""

    status: int
    location: str
    body: bytes | None


async def _http_get(ip: str, port: int, host: str, path: str, phase: list[str]) -> _HttpReply:
    """One HTTP/1.1 GET on a fresh connection, spoken with h11 over a trio stream.

    Not httpx: a client per check cost an SSL context, 24 ms of CPU per check,
    and even one shared client costs twice what this does (BENCHMARKS.md, "DV
    checks"). The caller bounds the time."""
    stream = await trio.open_tcp_stream(ip, port)
    phase[0] = "request"  # connected: from now on slowness is the server's
    async with stream:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HTTP_HEADER_BYTES)
        headers = [
            ("Host", host),
            ("Accept-Encoding", "identity"),
            ("User-Agent", "dpkid-dv/1"),
            ("Connection", "close"),
        ]
        out = conn.send(h11.Request(method="GET", target=path, headers=headers))
        await stream.send_all((out or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status, location, body = 0, "", bytearray()
        phase[0] = "read"
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECV_CHUNK_BYTES))
            elif isinstance(ev, h11.Response):
                status = ev.status_code
                for name, value in ev.headers:
                    if name == b"location":
                        location = value.decode("latin-1")
                    elif (
                        name == b"content-length"
                        and value.strip().isdigit()
                        and int(value) > MAX_HTTP_BODY_BYTES
                    ):
                        return _HttpReply(status, location, None)
                if status in REDIRECT_CODES:
                    return _HttpReply(status, location, b"")
            elif isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_HTTP_BODY_BYTES:
                    return _HttpReply(status, location, None)
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                return _HttpReply(status, location, bytes(body))


async def _http_fetch(
    ip: str, host: str, ch: Challenge, cfg: CheckConfig, phase: list[str]
) -> CheckResult:
    path = ch.http_path
    for hop in range(cfg.max_redirects + 1):
        phase[0] = "connect"
        reply = await _http_get(ip, cfg.http_port, host, path, phase)
        if reply.status in REDIRECT_CODES:
            nxt = _same_domain_redirect(reply.location, host, path, cfg.http_port)
            if nxt is None:
                return _fail("redirect off the domain")
            if hop == cfg.max_redirects:
                return _fail("too many redirects")
            path = nxt
            continue
        if reply.status != 200:
            return _fail(f"HTTP status {reply.status}")
        if reply.body is None:
            return _fail("response body too large")
        try:
            text = reply.body.decode("ascii").rstrip(" \t\r\n")
        except UnicodeDecodeError:
            return _fail("body is not the key authorization")
        if text != ch.key_authorization:
            return _fail("body is not the key authorization")
        return _ok("http-01")
    return _fail("too many redirects")  # not reached


def _same_domain_redirect(location: str, host: str, path: str, port: int) -> str | None:
    """The next path if `location` stays on http://<host>[:port], else None."""
    if not location or len(location) > 2048:
        return None
    target = urlsplit(urljoin(f"http://{host}:{port}{path}", location))
    if target.scheme != "http" or (target.hostname or "").rstrip(".").lower() != host:
        return None
    try:
        tport = target.port
    except ValueError:
        return None
    if tport not in (None, port):
        return None
    return (target.path or "/") + (f"?{target.query}" if target.query else "")


# ------------------------------------------------------------------ per domain, per application


async def check_domain(
    resolver: dns.asyncresolver.Resolver, domain: str, ch: Challenge, cfg: CheckConfig
) -> CheckResult:
    """ok if any allowed method passes (a wildcard: dns-01 only)."""
    methods = ch.methods_for(domain)
    tried: list[tuple[str, CheckResult]] = []
    if "http-01" in methods:
        r = await check_http01(resolver, domain, ch, cfg)
        if r.ok:
            return r
        tried.append(("http-01", r))
    if "dns-01" in methods:
        r = await check_dns01(resolver, domain, ch, cfg.dns_timeout_s)
        if r.ok:
            return r
        tried.append(("dns-01", r))
    for _, r in tried:
        if r.outcome == UNREACHABLE:
            return r
    if "http-01" not in methods:
        # dns-01 alone failed: if the zone itself does not exist, that is
        # "unreachable" (as for http-01), not proof of a wrong record.
        gone = await name_exists(resolver, base_name(domain), cfg.dns_timeout_s)
        if gone is not None:
            return gone
    return _fail("; ".join(f"{m}: {r.reason}" for m, r in tried))


async def check_application(
    resolver: dns.asyncresolver.Resolver,
    domains: Sequence[str],
    ch: Challenge,
    cfg: CheckConfig,
    limiter: trio.CapacityLimiter | None = None,
) -> CheckResult:
    """ok if every domain passed (method dns-01 if any needed DNS), fail if any
    failed definitively, otherwise unreachable."""
    results: dict[str, CheckResult] = {}

    async def one(d: str, cancel: trio.CancelScope) -> None:
        if limiter is not None:
            async with limiter:
                r = await check_domain(resolver, d, ch, cfg)
        else:
            r = await check_domain(resolver, d, ch, cfg)
        results[d] = r
        if r.outcome == FAIL:
            cancel.cancel()  # one definitive failure decides the application

    async with trio.open_nursery() as nursery:
        for d in domains:
            nursery.start_soon(one, d, nursery.cancel_scope)
    for d in domains:
        r = results.get(d)
        if r is not None and r.outcome == FAIL:
            return _fail(_clip(f"{d}: {r.reason}"))
    for d in domains:
        r = results.get(d)
        if r is None or r.outcome == UNREACHABLE:
            return _unreachable(_clip(f"{d}: {r.reason if r else 'not checked'}"))
    method = "dns-01" if any(results[d].method == "dns-01" for d in domains) else "http-01"
    return _ok(method)


def _clip(s: str, n: int = MAX_REASON) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


# ------------------------------------------------------------------ the checker


class _DaemonLike(Protocol):
    """What the checker needs of a NodeDaemon."""

    settings: Any
    key: Any
    core: Any
    genesis: Any
    log: Any

    async def submit_tx(self, raw: bytes) -> TxVerdict: ...


class DvChecker:
    """Attached to a NodeDaemon: checks every new application and attests.

    ``on_block`` is a block listener (called by the daemon's driver for each
    committed block); ``run`` is the task doing the work. Only validators
    check; a node that is not one ignores everything.

    ``fault`` ("approve_all" | "reject_all") makes this validator lie without
    checking anything. It exists ONLY for fault-injection tests of the
    threshold (NodeSettings.dv_fault); never set it on a real node.
    """

    def __init__(
        self,
        daemon: _DaemonLike,
        cfg: CheckConfig | None = None,
        fault: str = "",
        resume_pending: bool = False,
    ) -> None:
        if fault not in DV_FAULTS:
            raise ValueError(f"dv_fault must be one of {DV_FAULTS}")
        s = daemon.settings
        self.d = daemon
        self.cfg = cfg or CheckConfig(
            resolver=s.dns_resolver,
            http_port=s.http_port,
            allow_private_addresses=s.dv_allow_private_addresses,
        )
        self.fault = fault
        self.resume_pending = resume_pending
        self.log = daemon.log.bind(component="dv")
        # dns_resolver = "none": this node performs no checks (and never attests).
        self.enabled = self.cfg.resolver != "none" or bool(fault)
        self.resolver = make_resolver(
            "" if self.cfg.resolver == "none" else self.cfg.resolver, self.cfg.dns_timeout_s
        )
        self.limiter = trio.CapacityLimiter(MAX_IN_FLIGHT)
        self._q_send, self._q_recv = trio.open_memory_channel[bytes](QUEUE_SIZE)
        self._slots = trio.Semaphore(MAX_TRACKED)
        self._tracked: set[bytes] = set()
        self._results: list[Attestation] = []
        self._in_results: set[bytes] = set()  # app ids of _results (membership only)
        self._wake = trio.Event()
        self._submitted: OrderedDict[bytes, None] = OrderedDict()
        self._backlog = False  # the ledger holds pending applications not queued
        self.stats = {
            "checked": 0,
            "ok": 0,
            "fail": 0,
            "unreachable": 0,
            "txs": 0,
            "dropped": 0,
            "deferred": 0,
        }

    # ---------------------------------------------------------------- inputs
    def on_block(self, e: Any) -> None:
        """Block listener: queue the applications this block created. Never raises."""
        try:
            if not self.enabled or not self.d.core.is_validator:
                return
            for r in e.receipts:
                for ev in r.events:
                    if ev.kind == "app_created":
                        self.enqueue(bytes(ev.ref))
        except Exception as exc:
            self.log.warning("dv_on_block_failed", error=repr(exc))

    def enqueue(self, app_id: bytes) -> bool:
        """Queue one application; when the queue is full, remember that the
        ledger holds applications we have not queued (``_rescan`` finds them)."""
        try:
            self._q_send.send_nowait(app_id)
            return True
        except trio.WouldBlock:
            if not self._backlog:
                self.log.info("dv_backlog", queued=QUEUE_SIZE)
            self._backlog = True
            self.stats["deferred"] += 1
            return False

    def _ours_to_check(self, app_id: bytes) -> bool:
        if app_id in self._tracked or app_id in self._submitted or app_id in self._in_results:
            return False
        return self._open_application(app_id) is not None

    async def _rescan(self) -> None:
        """Under a burst of applications the queue overflows. Nothing is dropped:
        the ledger is the list of what is pending, so once the queue has room
        again, the pending applications this validator has not attested are
        queued from it, oldest first, walking the list in pages of RESCAN_MAX
        from a cursor until one walk reaches its end without overflowing."""
        cursor: tuple[int, bytes] = (-1, b"")
        while True:
            await trio.sleep(RESCAN_INTERVAL_S)
            if not self._backlog or self._q_send.statistics().current_buffer_used > 0:
                continue
            page = self.d.core.ledger.pending_applications(RESCAN_MAX, cursor)
            queued = 0
            for key in page:
                if self._ours_to_check(key[1]):
                    if not self.enqueue(key[1]):
                        break  # full again: resume from here next time
                    queued += 1
                cursor = key
            else:
                if len(page) < RESCAN_MAX:  # walked to the end
                    cursor = (-1, b"")
                    self._backlog = False
            self.log.info("dv_rescan", read=len(page), queued=queued, backlog=self._backlog)

    # ---------------------------------------------------------------- tasks
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.fault:
            self.log.warning("dv_fault_injection", mode=self.fault)
        elif not self.enabled:
            self.log.info("dv_disabled", why='dns_resolver is "none"')
        if self.resume_pending and self.enabled and self.d.core.is_validator:
            # After a restart, applications created before it are still ours to check.
            for app_id in self.d.core.ledger.pending_application_ids(limit=256):
                app = self.d.core.ledger.application(app_id)
                if app is not None and all(
                    a.validator != self.d.key.address for a in app.attestations
                ):
                    self.enqueue(app_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._submit_loop)
            nursery.start_soon(self._rescan)
            task_status.started()
            async for app_id in self._q_recv:
                if app_id in self._tracked or app_id in self._submitted:
                    continue
                await self._slots.acquire()
                self._tracked.add(app_id)
                nursery.start_soon(self._track, app_id)

    async def _track(self, app_id: bytes) -> None:
        delay = BACKOFF_START_S
        first = trio.current_time()
        try:
            for attempt in range(MAX_ATTEMPTS):
                app = self._open_application(app_id)
                if app is None:
                    return
                res = await self.check(app)
                self.stats["checked"] += 1
                self.stats[res.outcome] += 1
                waited = trio.current_time() - first
                if res.outcome == FAIL and not self.fault and waited < self.cfg.fail_grace_s:
                    # Perhaps not published yet: retry, but attest nothing before the grace ends.
                    pause = min(delay, max(0.0, self.cfg.fail_grace_s - waited))
                    event = "dv_not_yet"
                elif res.outcome == UNREACHABLE:
                    event, pause = "dv_unreachable", delay
                else:
                    # Per application, so debug: the batch is logged at info when submitted.
                    self.log.debug(
                        "dv_checked",
                        app_id=app_id.hex(),
                        outcome=res.outcome,
                        method=res.method,
                        reason=res.reason,
                    )
                    self._add_result(app, res)
                    return
                self.log.info(
                    event,
                    app_id=app_id.hex(),
                    attempt=attempt + 1,
                    retry_in_s=delay,
                    reason=res.reason,
                )
                await trio.sleep(pause)
                delay = min(delay * 2, BACKOFF_MAX_S)
            self.log.warning("dv_gave_up", app_id=app_id.hex(), attempts=MAX_ATTEMPTS)
        except Exception as exc:
            self.log.warning("dv_check_crashed", app_id=app_id.hex(), error=repr(exc))
        finally:
            self._tracked.discard(app_id)
            self._slots.release()

    def _open_application(self, app_id: bytes) -> Application | None:
        """The application if this validator should still check it."""
        if not self.d.core.is_validator:
            return None
        st = self.d.core.ledger
        app: Application | None = st.application(app_id)
        if app is None or app.status != "pending" or st.time_ms >= app.expires_ms:
            return None
        me = self.d.key.address
        if app.applicant == me or any(a.validator == me for a in app.attestations):
            return None
        if authorized(app.attestations):  # validated through cited authorizations
            return None
        return app

    async def check(self, app: Application) -> CheckResult:
        if self.fault == "approve_all":
            return _ok("dns-01")
        if self.fault == "reject_all":
            return _fail("fault injection: reject_all")
        ch = challenge_for(app)
        t0 = time.monotonic()
        res = await check_application(self.resolver, app.domains, ch, self.cfg, self.limiter)
        self.log.debug("dv_check_done", seconds=round(time.monotonic() - t0, 3))
        return res

    # ---------------------------------------------------------------- results -> txs
    def _add_result(self, app: Application, res: CheckResult) -> None:
        if len(self._results) >= MAX_RESULTS:
            self.stats["dropped"] += 1
            self.log.warning("dv_results_full", app_id=app.app_id.hex())
            return
        method = res.method if res.ok else ("dns-01" if _has_wildcard(app) else "http-01")
        self._results.append(Attestation(app.app_id, res.ok, _method(method), _clip(res.reason)))
        self._in_results.add(app.app_id)
        self._wake.set()

    async def _submit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(BATCH_DELAY_S)
            while self._results:
                batch = self._results[:MAX_ATTESTATIONS_PER_TX]
                del self._results[: len(batch)]
                try:
                    await self._submit(self._still_open(batch))
                except Exception as exc:
                    self.log.warning("dv_submit_crashed", error=repr(exc))
                finally:
                    self._in_results.difference_update(a.app_id for a in batch)

    def _still_open(self, items: list[Attestation]) -> list[Attestation]:
        out = []
        for it in items:
            if self._open_application(it.app_id) is not None:
                out.append(it)
        return out

    async def _submit(self, items: list[Attestation]) -> None:
        if not items:
            return
        for chunk in split_for_tx(items, self._encode):
            await self._submit_one(chunk)

    def _encode(self, items: list[Attestation], nonce: int = 0) -> bytes:
        st = self.d.core.ledger
        tx = sign_tx(
            self.d.key, self.d.genesis.chain_id, nonce, st.policy.min_tx_fee, DvAttest(items)
        )
        return encode_tx(tx)

    def next_nonce(self) -> int:
        """The committed nonce plus this account's txs pending in the mempool."""
        n: int = self.d.core.next_nonce(self.d.key.address)
        return n

    async def _submit_one(self, items: list[Attestation]) -> None:
        for attempt in range(2):
            raw = self._encode(items, self.next_nonce())
            v = await self.d.submit_tx(raw)
            code, why, h = v.verdict, v.why, v.tx_hash
            if code == Code.OK:
                self.stats["txs"] += 1
                for it in items:
                    self._submitted[it.app_id] = None
                while len(self._submitted) > REMEMBER_SUBMITTED:
                    self._submitted.popitem(last=False)
                self.log.info(
                    "dv_attest_submitted",
                    tx=h.hex(),
                    items=len(items),
                    ok=sum(1 for i in items if i.ok),
                )
                return
            if code == Code.BAD_NONCE and attempt == 0:
                continue  # the mempool moved under us: resync the nonce once
            self.log.warning("dv_attest_rejected", code=code.name, why=why, items=len(items))
            return


def _method(m: str) -> Literal["http-01", "dns-01"]:
    return "dns-01" if m == "dns-01" else "http-01"


def _has_wildcard(app: Application) -> bool:
    return any(d.startswith("*.") for d in app.domains)


def split_for_tx(
    items: list[Attestation], encode: Any, limit: int = MAX_TX_BYTES
) -> list[list[Attestation]]:
    """Chunks of at most 64 items whose signed transaction fits MAX_TX_BYTES."""
    out: list[list[Attestation]] = []
    todo = [items[i : i + MAX_ATTESTATIONS_PER_TX] for i in range(0, len(items), 64)]
    while todo:
        chunk = todo.pop(0)
        if len(chunk) > 1 and len(encode(chunk)) > limit:
            mid = math.ceil(len(chunk) / 2)
            todo[:0] = [chunk[:mid], chunk[mid:]]
            continue
        out.append(chunk)
    return out


# ------------------------------------------------------------------ authorizations (SPEC §7.9)

MAX_AUTHZ_TRACKED: Final = 512


def acme_problem(res: CheckResult) -> str:
    """The ACME error type (RFC 8555 §6.7) for a failed check."""
    r = res.reason.lower()
    if "address" in r and ("private" in r or "loopback" in r or "reserved" in r or "is " in r):
        return "rejectedIdentifier"
    if "dns" in r or "nxdomain" in r or "no a record" in r or "no txt record" in r:
        return "dns"
    if res.outcome == UNREACHABLE or "connect" in r or "timed out" in r or "reset" in r:
        return "connection"
    return "incorrectResponse"


async def check_authz(
    resolver: dns.asyncresolver.Resolver, a: Authorization, cfg: CheckConfig
) -> CheckResult:
    """The authorization's one method, in its format (dpkid's or ACME's)."""
    ch = challenge_for_authz(a)
    if a.method == "dns-01":
        res = await check_dns01(resolver, a.name, ch, cfg.dns_timeout_s)
        if not res.ok and res.outcome == FAIL:
            gone = await name_exists(resolver, base_name(a.name), cfg.dns_timeout_s)
            if gone is not None:
                return gone
        return res
    return await check_http01(resolver, a.name, ch, cfg)


class AuthzChecker:
    """Checks every new authorization once this validator sees it, and posts
    the outcome with an ACME problem type and the reason (``authz_attest``).
    A failure is posted only after ``fail_grace_s`` (the applicant may still
    be publishing), and a later success replaces it while the authorization
    is pending; retries back off as for applications."""

    def __init__(self, dv: DvChecker) -> None:
        self.dv = dv
        self.d = dv.d
        self.log = dv.log.bind(component="authz")
        self._q_send, self._q_recv = trio.open_memory_channel[bytes](QUEUE_SIZE)
        self._slots = trio.Semaphore(MAX_AUTHZ_TRACKED)
        self._tracked: set[bytes] = set()
        self.stats = {"checked": 0, "ok": 0, "fail": 0, "unreachable": 0, "txs": 0}

    def on_block(self, e: Any) -> None:
        try:
            if not self.dv.enabled or not self.d.core.is_validator:
                return
            for r in e.receipts:
                for ev in r.events:
                    if ev.kind == "authz_created":
                        with contextlib.suppress(trio.WouldBlock):
                            self._q_send.send_nowait(bytes(ev.ref))
        except Exception as exc:
            self.log.warning("authz_on_block_failed", error=repr(exc))

    def _open(self, authz_id: bytes) -> Authorization | None:
        st = self.d.core.ledger
        a: Authorization | None = st.get(key_authz(authz_id))
        if a is None or authz_status(a, st.time_ms) != "pending":
            return None
        if a.account == self.d.key.address:
            return None
        return a

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.dv.resume_pending and self.dv.enabled and self.d.core.is_validator:
            # After a restart, authorizations requested before it are still ours to check.
            me = self.d.key.address
            for aid in self.d.core.ledger.pending_authz_ids(limit=min(256, QUEUE_SIZE)):
                a = self._open(aid)
                if a is not None and all(c.validator != me for c in a.checks):
                    with contextlib.suppress(trio.WouldBlock):
                        self._q_send.send_nowait(aid)
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for aid in self._q_recv:
                if aid in self._tracked:
                    continue
                await self._slots.acquire()
                self._tracked.add(aid)
                nursery.start_soon(self._track, aid)

    async def _track(self, aid: bytes) -> None:
        delay = BACKOFF_START_S
        first = trio.current_time()
        posted: bool | None = None  # the outcome we last posted
        try:
            for _ in range(MAX_ATTEMPTS):
                a = self._open(aid)
                if a is None:
                    return
                if self.dv.fault == "approve_all":
                    res = _ok(a.method)
                elif self.dv.fault == "reject_all":
                    res = _fail("fault injection: reject_all")
                else:
                    async with self.dv.limiter:
                        res = await check_authz(self.dv.resolver, a, self.dv.cfg)
                self.stats["checked"] += 1
                self.stats[res.outcome] += 1
                late = trio.current_time() - first >= self.dv.cfg.fail_grace_s
                if res.ok or (late and posted is None):
                    check = AuthzCheck(
                        aid,
                        res.ok,
                        "" if res.ok else acme_problem(res),  # type: ignore[arg-type]
                        _clip(res.reason),
                    )
                    if await self._submit(check):
                        posted = res.ok
                    if res.ok:
                        return
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        except Exception as exc:
            self.log.warning("authz_check_crashed", authz_id=aid.hex(), error=repr(exc))
        finally:
            self._tracked.discard(aid)
            self._slots.release()

    async def _submit(self, check: AuthzCheck) -> bool:
        for attempt in range(2):
            tx = sign_tx(
                self.d.key,
                self.d.genesis.chain_id,
                self.dv.next_nonce(),
                self.d.core.ledger.policy.min_tx_fee,
                AuthzAttest([check]),
            )
            v = await self.d.submit_tx(encode_tx(tx))
            if v.verdict == Code.OK:
                self.stats["txs"] += 1
                self.log.info(
                    "authz_checked",
                    authz_id=check.authz_id.hex(),
                    ok=check.ok,
                    problem=check.problem,
                    reason=check.detail,
                )
                return True
            if v.verdict != Code.BAD_NONCE or attempt:
                self.log.warning("authz_attest_rejected", code=str(v.verdict), why=v.why)
                return False
        return False
