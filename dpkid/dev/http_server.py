"""A challenge web server on 127.0.0.1 for tests and the demo (stdlib only).

It serves `/.well-known/dpki-challenge/<token>` per Host header from a
thread-safe `ChallengeMap`, and can misbehave on purpose, per host, to test
how validators cope with hostile responders:

    ""            serve the map (404 for anything not in it)
    "wrong_body"  200 with a body that is not the key authorization
    "oversized"   200 with a body far larger than any key authorization
    "unsized"     the same, with no Content-Length: the body ends when the connection does
    "hangup"      read the request, then close without a word
    "garbage"     bytes that are not HTTP at all, then close
    "slowloris"   a status line, then one byte every half second (for up to a minute)
    "redirect"    302 to `arg` for any path not in the map (e.g. off-domain)
    "status"      answer with the status code in `arg` (e.g. "500")

In-process::

    m = ChallengeMap()
    m.set("example.test", token, key_authorization)
    with ChallengeHttpServer(m) as srv:   # srv.port is NodeSettings.http_port
        ...

As a process, re-reading the map file whenever it changes::

    python -m dpkid.dev.http_server --port 8080 --map map.json

    {"example.test": {"paths": {"/.well-known/dpki-challenge/TOKEN": "BODY"},
                      "behaviour": "", "arg": ""}}
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Self

from dpkid.core.challenges import HTTP_PATH_PREFIX, MAX_HTTP_BODY_BYTES
from dpkid.dev.jsonfile import JsonTable, LoopbackServer, serve_file_main

BEHAVIOURS: Final = (
    "",
    "wrong_body",
    "oversized",
    "unsized",
    "hangup",
    "garbage",
    "slowloris",
    "redirect",
    "status",
)
OVERSIZED_BYTES: Final = 64 * MAX_HTTP_BODY_BYTES
SLOWLORIS_INTERVAL_S: Final = 0.5
SLOWLORIS_MAX_S: Final = 60.0
GARBAGE: Final = bytes(range(256)) * 4 + b"\r\n\r\n\x00\x00"


class MapError(ValueError):
    pass


def norm_host(host: str) -> str:
    h = host.strip().lower()
    if h.startswith("["):  # [v6]:port
        h = h[1 : h.find("]")] if "]" in h else h
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class _Host:
    __slots__ = ("arg", "behaviour", "paths")

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}
        self.behaviour = ""
        self.arg = ""


class ChallengeMap(JsonTable[_Host]):
    """Host -> path -> body, plus a behaviour per host; safe from any thread."""

    error = MapError
    shape = "a challenge map is a JSON object of hosts"
    kind = "map"
    noun = "hosts"
    keys = frozenset({"paths", "behaviour", "arg"})
    norm = staticmethod(norm_host)

    def set(self, host: str, token: str, body: str) -> None:
        self.set_path(host, HTTP_PATH_PREFIX + token, body)

    def set_path(self, host: str, path: str, body: str) -> None:
        if not path.startswith("/"):
            raise MapError("a path starts with /")
        with self._lock:
            self._entry(host).paths[path] = body

    def set_behaviour(self, host: str, behaviour: str, arg: str = "") -> None:
        if behaviour not in BEHAVIOURS:
            raise MapError(f"behaviour must be one of {BEHAVIOURS}")
        with self._lock:
            h = self._entry(host)
            h.behaviour, h.arg = behaviour, arg

    def lookup(self, host: str, path: str) -> tuple[str, str, str | None]:
        """(behaviour, arg, body or None) for one request."""
        with self._lock:
            h = self._entries.get(norm_host(host))
            if h is None:
                return "", "", None
            return h.behaviour, h.arg, h.paths.get(path)

    def _entry_json(self, entry: _Host) -> dict[str, Any]:
        return {"paths": dict(entry.paths), "behaviour": entry.behaviour, "arg": entry.arg}

    def _new_entry(self) -> _Host:
        return _Host()

    @classmethod
    def _parse_entry(cls, name: str, spec: Mapping[str, Any]) -> _Host:
        h = _Host()
        paths = spec.get("paths", {})
        if not isinstance(paths, Mapping):
            raise MapError(f"{name}: paths is an object of path -> body")
        h.paths = {str(p): str(b) for p, b in paths.items()}
        h.behaviour = str(spec.get("behaviour", ""))
        h.arg = str(spec.get("arg", ""))
        if h.behaviour not in BEHAVIOURS:
            raise MapError(f"{name}: behaviour must be one of {BEHAVIOURS}")
        return h


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    timeout = 15  # an idle client is dropped
    server_version = "dpkid-devnet"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        host = self.headers.get("Host", "")
        path = self.path.split("?", 1)[0]
        behaviour, arg, body = self.server.challenges.lookup(host, path)
        if behaviour == "garbage":
            self.wfile.write(GARBAGE)
            self.close_connection = True
            return
        if behaviour == "hangup":
            self.close_connection = True
            return
        if behaviour == "unsized":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"A" * OVERSIZED_BYTES)
            self.close_connection = True
            return
        if behaviour == "slowloris":
            self._slowloris()
            return
        if behaviour == "wrong_body":
            self._reply(200, "this is not the key authorization")
            return
        if behaviour == "oversized":
            self._reply(200, "A" * OVERSIZED_BYTES)
            return
        if behaviour == "status":
            self._reply(int(arg or 500), "")
            return
        if behaviour == "redirect" and body is None:
            self.send_response(302)
            self.send_header("Location", arg)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if body is None:
            self._reply(404, "no such challenge\n")
            return
        self._reply(200, body)

    def _reply(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _slowloris(self) -> None:
        self.close_connection = True
        stop = self.server.stopping
        try:
            self.wfile.write(b"HTTP/1.0 200 OK\r\n")
            self.wfile.flush()
            end = time.monotonic() + SLOWLORIS_MAX_S
            while time.monotonic() < end and not stop.is_set():
                if stop.wait(SLOWLORIS_INTERVAL_S):
                    break
                self.wfile.write(b"X")
                self.wfile.flush()
        except OSError:
            pass  # the client gave up, as it should


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # many validators connect at once; 5 (the default) drops SYNs

    def __init__(self, addr: tuple[str, int], challenges: ChallengeMap, verbose: bool) -> None:
        super().__init__(addr, _Handler)
        self.challenges = challenges
        self.verbose = verbose
        self.stopping = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-response are expected here (that is the point).
        if self.verbose:
            super().handle_error(request, client_address)


class ChallengeHttpServer(LoopbackServer):
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    def __init__(
        self,
        challenges: ChallengeMap | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
    ) -> None:
        self.challenges = challenges if challenges is not None else ChallengeMap()
        self.host = host
        self.want_port = port
        self.verbose = verbose
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @classmethod
    def from_cli(cls, table: ChallengeMap, host: str, port: int, switch: bool) -> Self:
        return cls(table, host, port, verbose=switch)

    cli_switch = ("--verbose", "log each request to stderr")

    def start(self) -> Self:
        srv = _Server((self.host, self.want_port), self.challenges, self.verbose)
        self._server = srv
        self.port = int(srv.server_address[1])
        self._thread = threading.Thread(target=srv.serve_forever, name="challenge-http")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        srv = self._server
        if srv is None:
            return
        srv.stopping.set()
        with contextlib.suppress(Exception):
            srv.shutdown()
            srv.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None


def main(argv: list[str] | None = None) -> int:
    return serve_file_main(argv, ChallengeHttpServer, ChallengeMap())


if __name__ == "__main__":
    sys.exit(main())
