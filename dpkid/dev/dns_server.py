"""A small authoritative DNS server on 127.0.0.1 for tests and the demo (dnslib).

It answers A and TXT queries from a thread-safe `Zone` that can be changed
while it runs; unknown names get NXDOMAIN. It never recurses and never
forwards, so nothing it is asked for leaves the machine.

In-process::

    zone = Zone()
    zone.set_a("example.test", ["127.0.0.1"])
    with DevDnsServer(zone) as dns:         # UDP and TCP on 127.0.0.1, a free port
        ... dns.address ...                  # "127.0.0.1:PORT" for NodeSettings.dns_resolver

As a process (the zone file is re-read whenever it changes, so a program in
another process can add records with `Zone.write_file`)::

    python -m dpkid.dev.dns_server --port 5353 --zone zone.json

The zone file is a JSON object of names::

    {"example.test": {"A": ["127.0.0.1"]},
     "_dpki-challenge.example.test": {"TXT": ["<value>"]},
     "slow.test": {"mode": "drop"}}          # "drop": never answer; "servfail": SERVFAIL
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from collections.abc import Mapping
from typing import Any, Final, Self

from dnslib import (  # type: ignore[import-untyped]
    QTYPE,
    RCODE,
    RR,
    TXT,
    A,
    DNSError,
)
from dnslib.server import DNSServer  # type: ignore[import-untyped]

from dpkid.dev.jsonfile import JsonTable, LoopbackServer, serve_file_main

MODES: Final = ("", "drop", "servfail")
RECORD_TYPES: Final = ("A", "TXT")
MAX_TXT_LEN: Final = 255


class ZoneError(ValueError):
    pass


def norm_name(name: str) -> str:
    n = name.strip().rstrip(".").lower()
    if not n:
        raise ZoneError("empty name")
    return n


class _Entry:
    __slots__ = ("a", "mode", "txt")

    def __init__(self) -> None:
        self.a: list[str] = []
        self.txt: list[str] = []
        self.mode: str = ""


class Zone(JsonTable[_Entry]):
    """Names -> A and TXT records, safe to read and change from any thread."""

    error = ZoneError
    shape = "a zone is a JSON object of names"
    kind = "zone"
    noun = "names"
    keys = frozenset({*RECORD_TYPES, "mode"})
    norm = staticmethod(norm_name)

    # ---------------------------------------------------------------- edits
    def set_a(self, name: str, ips: list[str]) -> None:
        for ip in ips:
            ipaddress.IPv4Address(ip)  # raises ValueError on a bad address
        with self._lock:
            self._entry(name).a = list(ips)

    def set_txt(self, name: str, values: list[str]) -> None:
        for v in values:
            if len(v.encode()) > MAX_TXT_LEN:
                raise ZoneError(f"TXT value longer than {MAX_TXT_LEN} bytes")
        with self._lock:
            self._entry(name).txt = list(values)

    def add_txt(self, name: str, value: str) -> None:
        with self._lock:
            cur = list(self._entry(name).txt)
        self.set_txt(name, [*cur, value])

    def set_mode(self, name: str, mode: str) -> None:
        """Mode "drop": never answer queries for the name; "servfail": answer SERVFAIL."""
        if mode not in MODES:
            raise ZoneError(f"mode must be one of {MODES}")
        with self._lock:
            self._entry(name).mode = mode

    def _new_entry(self) -> _Entry:
        return _Entry()

    @classmethod
    def _parse_entry(cls, name: str, spec: Mapping[str, Any]) -> _Entry:
        e = _Entry()
        a = spec.get("A", [])
        txt = spec.get("TXT", [])
        if not isinstance(a, list) or not isinstance(txt, list):
            raise ZoneError(f"{name}: A and TXT are lists of strings")
        try:
            e.a = [str(ipaddress.IPv4Address(str(ip))) for ip in a]
        except ValueError as exc:
            raise ZoneError(f"{name}: {exc}") from None
        e.txt = [str(v) for v in txt]
        if any(len(v.encode()) > MAX_TXT_LEN for v in e.txt):
            raise ZoneError(f"{name}: TXT value longer than {MAX_TXT_LEN} bytes")
        e.mode = str(spec.get("mode", ""))
        if e.mode not in MODES:
            raise ZoneError(f"{name}: mode must be one of {MODES}")
        return e

    # ---------------------------------------------------------------- reads
    def _entry_json(self, entry: _Entry) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if entry.a:
            d["A"] = list(entry.a)
        if entry.txt:
            d["TXT"] = list(entry.txt)
        if entry.mode:
            d["mode"] = entry.mode
        return d

    def lookup(self, name: str, qtype: str) -> tuple[str, list[str]]:
        """(outcome, values): outcome is "ok", "nxdomain", "drop" or "servfail"."""
        try:
            n = norm_name(name)
        except ZoneError:
            return "nxdomain", []
        with self._lock:
            e = self._entries.get(n)
            if e is None:
                # An empty non-terminal (a parent of a known name) exists, with no records.
                if any(k.endswith("." + n) for k in self._entries):
                    return "ok", []
                return "nxdomain", []
            if e.mode:
                return e.mode, []
            if qtype == "A":
                return "ok", list(e.a)
            if qtype == "TXT":
                return "ok", list(e.txt)
            return "ok", []


class _Resolver:
    """dnslib resolver interface: authoritative answers from a Zone."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        reply.header.aa = 1
        reply.header.ra = 0
        for q in request.questions:
            qname = str(q.qname)
            qtype = QTYPE.get(q.qtype, str(q.qtype))
            outcome, values = self.zone.lookup(qname, qtype)
            if outcome == "drop":
                # dnslib's handler sends nothing when resolving raises DNSError.
                raise DNSError("dropped on purpose")
            if outcome == "servfail":
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if outcome == "nxdomain":
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for v in values:
                rdata = A(v) if qtype == "A" else TXT(v)
                reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=0))
        return reply


class _QuietLogger:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class DevDnsServer(LoopbackServer):
    """UDP (and TCP) on one port of 127.0.0.1, each served by a daemon thread."""

    def __init__(
        self, zone: Zone | None = None, host: str = "127.0.0.1", port: int = 0, tcp: bool = True
    ) -> None:
        self.zone = zone if zone is not None else Zone()
        self.host = host
        self.want_port = port
        self.tcp = tcp
        self._servers: list[Any] = []
        self.port = 0

    cli_switch = ("--no-tcp", "serve UDP only")

    @classmethod
    def from_cli(cls, table: Zone, host: str, port: int, switch: bool) -> Self:
        return cls(table, host, port, tcp=not switch)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        resolver = _Resolver(self.zone)
        last: OSError | None = None
        for _ in range(20 if self.want_port == 0 else 1):
            udp = DNSServer(resolver, address=self.host, port=self.want_port, logger=_QuietLogger())
            port = int(udp.server.server_address[1])
            servers = [udp]
            if self.tcp:
                try:
                    servers.append(
                        DNSServer(
                            resolver, address=self.host, port=port, tcp=True, logger=_QuietLogger()
                        )
                    )
                except OSError as exc:  # the TCP port is taken: try another pair
                    udp.server.server_close()
                    last = exc
                    continue
            for s in servers:
                s.start_thread()
            self._servers = servers
            self.port = port
            return self
        raise OSError(f"no free UDP+TCP port pair on {self.host}: {last}")

    def stop(self) -> None:
        for s in self._servers:
            with contextlib.suppress(Exception):
                s.server.shutdown()
                s.server.server_close()
        self._servers = []


def main(argv: list[str] | None = None) -> int:
    return serve_file_main(argv, DevDnsServer, Zone())


if __name__ == "__main__":
    sys.exit(main())
