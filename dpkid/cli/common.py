"""What every `dpkid` command shares: exit codes, errors, JSON output, progress,
and how a node, its trust root and key files are named (README "Command line").

Exit status, for every command:

  0  success
  1  a negative answer: not valid, refused, revoked, not found, problems found
  2  usage and local errors: a bad flag, a missing or unreadable file, the node
     cannot be reached, or its answers do not verify (no answer could be had)
  3  a wait ran out (``--wait``/``--timeout``, a TLS server that does not answer)

With ``--json`` a command prints exactly one JSON document on stdout, errors
included (``{"error": "...", "exit_code": N}``), and nothing on stderr but
logs; without it, an error is one line on stderr. Progress on long work goes
to stderr, and is quiet under ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from dpkid.client.lightclient import VerifyError
from dpkid.client.rpc import (
    ClientTimeout,
    JsonRpcFraming,
    NodeUnreachable,
    RpcClientError,
    SyncClient,
    TxDropped,
    reply_result,
)
from dpkid.daemon.config import (
    CONFIG_FILE,
    GENESIS_FILE,
    SOCKET_FILE,
    ConfigError,
    Home,
    read_genesis,
    read_key,
    read_settings,
)
from dpkid.daemon.rpc import ADMIN_SOCKET_FILE

if TYPE_CHECKING:
    from dpkid.core.crypto import SigningKey
    from dpkid.core.types import Genesis


class Exit(IntEnum):
    """The process exit status: one scheme for every command (README, "Exit codes")."""

    OK = 0
    NO = 1  # a negative answer: not valid, refused, revoked, not found
    USAGE = 2  # usage or local error
    TIMEOUT = 3
    INTERRUPTED = 130  # SIGINT, as a shell reports it


EXIT_HELP: Final = (
    "exit status: 0 success; 1 a negative answer (not valid, refused, revoked, not found); "
    "2 usage or local error (bad flag, missing or unreadable file, node unreachable); "
    "3 a wait timed out"
)
HOME_ENV: Final = "DPKID_HOME"
RPC_TOKEN_FILE: Final = "rpc_token"
# JSON-RPC codes (dpkid.daemon.rpc / rpc_methods), repeated here so that the CLI
# does not import the server side (and trio) just to name them.
UNAUTHORIZED: Final = -32001
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
NOT_FOUND: Final = -32004


# ====================================================================== errors


class CliError(Exception):
    """A command's failure: one line for people, ``code`` for scripts, and
    ``data`` merged into the JSON error document."""

    code: int = Exit.USAGE

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


class UsageError(CliError):
    """Bad input, a bad local file, no node to talk to (exit 2)."""

    code = Exit.USAGE


class Refused(CliError):
    """The node refused, or the answer is a negative one (exit 1)."""

    code = Exit.NO


class WaitTimeout(CliError):
    """A wait ran out before the thing waited for happened (exit 3)."""

    code = Exit.TIMEOUT


class ParseError(Exception):
    """A command line argparse rejects; ``prog`` is the (sub)command's name."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises :class:`ParseError` instead of
    printing and exiting, so that ``main`` reports it once (as JSON under
    ``--json``), with exit status 2. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise ParseError(self.prog, message)

    def parse_command(self, argv: Sequence[str]) -> argparse.Namespace:
        ns, extra = self.parse_known_args(argv)
        if extra:
            prog = str(getattr(ns, "cmd_prog", None) or self.prog)
            shown = " ".join(extra)
            what = "argument" if len(extra) == 1 else "arguments"
            raise ParseError(prog, f"unknown {what} {shown}")
        return ns


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON (known before it is parsed)."""
    args = list(argv)
    if "--" in args:
        args = args[: args.index("--")]
    return "--json" in args


def print_json(obj: Any) -> None:
    """The one JSON format of every command's document."""
    print(json.dumps(obj, indent=2, sort_keys=True), flush=True)


def report_error(
    as_json: bool, prog: str, code: int, message: str, data: dict[str, Any] | None = None
) -> int:
    msg = one_line(message)
    if as_json:
        print_json({**(data or {}), "error": msg, "exit_code": code})
    else:
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)
    return code


def rpc_error_text(exc: Any) -> str:
    """A node's JSON-RPC error as one line (an ``RpcClientError``)."""
    msg = str(exc.message)
    data = exc.data if isinstance(exc.data, dict) else {}
    if data.get("name"):
        return f"node refused: {data['name']}: {msg}"
    for k in ("cert_id", "app_id"):
        if data.get(k):
            return f"{msg}: {data[k]}"
    return f"node error: {msg}" if msg else f"node error {exc.code}"


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; every failure becomes one line (or one JSON document)
    and its exit status, the same way for every command."""
    as_json = bool(getattr(args, "json", False))
    prog = str(getattr(args, "cmd_prog", "dpkid"))

    def fail(code: int, text: object, data: dict[str, Any] | None = None) -> int:
        return report_error(as_json, prog, code, str(text), data)

    try:
        return func(args)
    except CliError as exc:
        return fail(exc.code, exc, exc.data)
    except ConfigError as exc:
        return fail(Exit.USAGE, exc)
    except NodeUnreachable as exc:
        return fail(Exit.USAGE, exc)
    except RpcClientError as exc:
        bad_input = exc.code in (INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, UNAUTHORIZED)
        return fail(
            Exit.USAGE if bad_input else Exit.NO, rpc_error_text(exc), {"rpc_error": exc.error}
        )
    except ClientTimeout as exc:
        return fail(Exit.TIMEOUT, exc)
    except TxDropped as exc:
        return fail(Exit.NO, exc)
    except VerifyError as exc:
        return fail(Exit.USAGE, f"the node's answers do not verify (do not trust it): {exc}")
    except BrokenPipeError:  # `dpkid ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.OK
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


# ====================================================================== progress


class Progress:
    """Progress lines on stderr for long work, at most one per ``every_s``;
    silent under ``--json`` (``quiet``)."""

    def __init__(
        self,
        prog: str,
        quiet: bool,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prog = prog
        self.quiet = quiet
        self.every_s = every_s
        self.clock = clock
        self._last = clock()
        self.shown = 0

    def __call__(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = self.clock()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        self.shown += 1
        print(f"{self.prog}: {text}", file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        """A closing line, shown only if progress was shown before."""
        if self.shown:
            self(text, force=True)


def progress_for(args: argparse.Namespace) -> Progress:
    return Progress(str(getattr(args, "cmd_prog", "dpkid")), bool(getattr(args, "json", False)))


# ====================================================================== parsers


def add_command(
    sub: Any, name: str, help: str, description: str = "", hidden: bool = False
) -> argparse.ArgumentParser:
    """A command's parser under ``sub``: its ``description`` kept as written (default
    the ``help`` line) and the exit statuses as epilog; ``hidden``, its parent's help
    does not list it."""
    kw: dict[str, Any] = {} if hidden else {"help": help}
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        description=description or help,
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )
    return p


def hidden_alias(parser: argparse.ArgumentParser, action: argparse.Action, *names: str) -> None:
    """Accept ``names`` for ``action`` (an old spelling) without showing them in help."""
    for n in names:
        parser._option_string_actions[n] = action


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print one JSON document, errors included (scripts)"
    )


def add_node_args(
    p: argparse.ArgumentParser, genesis: bool = False, json_flag: bool = True
) -> None:
    """The one way every command names the node it asks: --home, --socket, --rpc."""
    g = p.add_argument_group("node (default: --home $DPKID_HOME, else the current directory)")
    g.add_argument(
        "--home",
        metavar="DIR",
        default=None,
        help="a node's home: its socket is HOME/dpkid.sock (or config.toml's rpc_socket)"
        + (", its genesis.json the trust root unless --genesis" if genesis else "")
        + "; default $DPKID_HOME",
    )
    g.add_argument("--socket", metavar="PATH", default=None, help="the node's JSON-RPC socket")
    g.add_argument(
        "--rpc",
        metavar="HOST:PORT",
        default=None,
        help="the node's TCP RPC listener (config.toml rpc_tcp), instead of the socket",
    )
    g.add_argument(
        "--rpc-token",
        metavar="FILE",
        default=None,
        help="the bearer token for --rpc (default HOME/rpc_token)",
    )
    if genesis:
        add_genesis_arg(p, g)
    if json_flag:
        add_json(p)


def add_genesis_arg(p: argparse.ArgumentParser, g: Any = None) -> None:
    a = (g or p).add_argument(
        "--genesis",
        metavar="FILE",
        default=None,
        help="the trust root: the chain's genesis.json you trust (default HOME/genesis.json)",
    )
    hidden_alias(p, a, "--trust")


def leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable (sub)command of ``parser``, with its words, hidden aliases too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaf_parsers(sub, (*path, name))
            return
    yield path, parser


# ====================================================================== the node


def home_dir(args: argparse.Namespace) -> Path | None:
    """The node home: --home, else $DPKID_HOME, else none given."""
    h = getattr(args, "home", None) or os.environ.get(HOME_ENV)
    return Path(h) if h else None


def require_home(args: argparse.Namespace) -> Path:
    home = home_dir(args)
    if home is None:
        raise UsageError(f"give --home DIR (or set {HOME_ENV})")
    return home


def require_node_home(home: Path) -> None:
    """``home`` is a node's home (it has a config.toml), or a UsageError says so."""
    if not home.is_dir():
        raise UsageError(f"node home {home} does not exist (create one with dpkid init)")
    if not (home / CONFIG_FILE).exists():
        raise UsageError(
            f"{home} is not a node home: it has no {CONFIG_FILE} (create one with dpkid init)"
        )


def parse_host_port(text: str, what: str, default_port: int | None = None) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT); HOST alone with ``default_port``."""
    t = text.strip()
    if t.startswith("["):
        host, close, rest = t[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise UsageError(f"{what} {text!r} is not [HOST]:PORT")
        port_s = rest[1:]
    elif t.count(":") == 1:
        host, _, port_s = t.partition(":")
    else:  # a bare host, or a bare IPv6 address
        host, port_s = t, ""
        if ":" in host:
            try:
                socket.inet_pton(socket.AF_INET6, host)
            except OSError:
                raise UsageError(f"{what} {text!r} is not HOST:PORT") from None
    if not port_s:
        if default_port is None:
            raise UsageError(f"{what} {text!r} is not HOST:PORT")
        port_s = str(default_port)
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise UsageError(f"{what} {text!r} is not HOST:PORT (a port 1-65535)")
    return host, int(port_s)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_client(args: argparse.Namespace, admin: bool = False) -> SyncClient:
    """The client for the node the command line names. ``admin``: by the node's
    admin socket, HOME/admin.sock, when the node is named by its home and has
    one (operator commands: it has slots no other client can hold, RPC.md §1.3)."""
    sock = getattr(args, "socket", None)
    rpc = getattr(args, "rpc", None)
    home = home_dir(args)
    if sock and rpc:
        raise UsageError("give the node as --socket PATH or --rpc HOST:PORT, not both")
    if rpc:
        if "/" in rpc or rpc.endswith(".sock"):
            raise UsageError(
                f"--rpc takes HOST:PORT of the node's TCP listener, not {rpc!r}; "
                "give a socket path as --socket PATH"
            )
        host, port = parse_host_port(rpc, "--rpc")
        token_file = getattr(args, "rpc_token", None)
        if token_file is None:
            if home is None:
                raise UsageError(
                    "--rpc needs the node's bearer token: give --rpc-token FILE "
                    f"(the node's HOME/{RPC_TOKEN_FILE}) or --home"
                )
            token_file = str(home / RPC_TOKEN_FILE)
        return TcpClient(host, port, read_token(Path(token_file)))
    if sock:
        return SyncClient(home, socket_path=sock)
    base = home or Path(".")
    if home is not None and not home.is_dir():
        raise UsageError(f"node home {home} does not exist")
    if admin and (base / ADMIN_SOCKET_FILE).exists():
        return SyncClient(base, socket_path=str(base / ADMIN_SOCKET_FILE))
    path = base / SOCKET_FILE
    h = Home(base)
    if h.config_file.exists():
        path = h.socket_path(read_settings(h.config_file))
    return SyncClient(base, socket_path=str(path))


def node_call(args: argparse.Namespace) -> Callable[[str, dict[str, Any]], Any]:
    """``call(method, params)`` on the named node, for the light client."""
    client = node_client(args)

    def call(method: str, params: dict[str, Any]) -> Any:
        return client.call(method, params)

    return call


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the RPC token {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"RPC token file {path} is not text") from None
    if not token or "\n" in token:
        raise UsageError(f"RPC token file {path} does not hold one token line")
    return token


def tcp_call(
    host: str, port: int, token: str, method: str, params: Any, timeout_s: float = 30.0
) -> Any:
    """One JSON-RPC call over the node's TCP listener (protocol/RPC.md §1.2)."""
    conn = JsonRpcFraming()
    _, line = conn.request(method, params)
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(f"Bearer {token}\n".encode() + line)
        while (msg := conn.next_message()) is None:
            conn.receive_data(s.recv(65536))
    return reply_result(msg)


class TcpClient(SyncClient):
    """SyncClient over the node's TCP listener, with its bearer token."""

    def __init__(self, host: str, port: int, token: str, timeout_s: float = 30.0) -> None:
        super().__init__(None, socket_path=f"{host}:{port}", timeout_s=timeout_s)
        self.host, self.port, self.token = host, port, token

    def call(self, method: str, params: Any = None) -> Any:
        try:
            return tcp_call(self.host, self.port, self.token, method, params, self.timeout_s)
        except RpcClientError as exc:
            if exc.code == UNAUTHORIZED:
                raise UsageError(
                    f"the node at {self.host}:{self.port} refused the RPC token ({exc.message})"
                ) from None
            raise
        except OSError as exc:
            raise NodeUnreachable(self.socket, exc.strerror or exc) from None
        except ValueError as exc:
            raise NodeUnreachable(self.socket, f"bad reply: {exc}") from None


# ====================================================================== the trust root


def genesis_path(args: argparse.Namespace) -> Path:
    g = getattr(args, "genesis", None)
    if g:
        return Path(g)
    home = home_dir(args)
    if home is None:
        raise UsageError(
            "give the trust root: --genesis FILE (the chain's genesis.json you trust), "
            "or --home of a node whose genesis you trust"
        )
    return home / GENESIS_FILE


def trusted_genesis(args: argparse.Namespace) -> Genesis:
    return load_genesis(genesis_path(args))


def load_genesis(path: Path) -> Genesis:
    """``read_genesis``, with a file that is not JSON named as such (not the parser's words)."""
    if not path.exists():
        raise UsageError(f"genesis {path} does not exist")
    try:
        json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise UsageError(f"genesis {path} is not JSON ({json_error_where(exc)})") from None
    except (OSError, UnicodeDecodeError):
        pass  # read_genesis says what
    return read_genesis(path)


# ====================================================================== files


def json_error_where(exc: json.JSONDecodeError) -> str:
    return f"line {exc.lineno}, column {exc.colno}"


@contextmanager
def _reading(path: str | Path, what: str) -> Iterator[None]:
    """A missing or unreadable file as a UsageError naming the file and what it is."""
    try:
        yield
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_bytes(path: str | Path, what: str) -> bytes:
    with _reading(path, what):
        return Path(path).read_bytes()


def read_text(path: str | Path, what: str, not_text: str) -> str:
    """A text file; one that is not text is the UsageError "{what} {path} {not_text}"."""
    with _reading(path, what):
        try:
            return Path(path).read_text()
        except UnicodeDecodeError:
            raise UsageError(f"{what} {path} {not_text}") from None


def read_json_file(path: Path, what: str) -> Any:
    """A JSON document; UsageError names the file and what is wrong with it."""
    text = read_text(path, what, "is not JSON (it is not text)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} is not JSON ({json_error_where(exc)})") from None


def write_file(path: Path, data: bytes | str, what: str = "") -> None:
    try:
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    except OSError as exc:
        where = f"{what} {path}" if what else str(path)
        raise UsageError(f"cannot write {where}: {exc.strerror or exc}") from None


def read_signing_key(path: str, flag: str) -> SigningKey:
    """A dpkid key file (JSON: account, endorser or node key) given as ``flag``."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"key file {p} does not exist")
    try:
        return read_key(p)
    except ConfigError as exc:
        hint = ""
        if flag != "--cert-key" and "PEM" in str(exc):
            hint = f" ({flag} takes a dpkid key file; a certificate's own key goes in --cert-key)"
        raise UsageError(f"{exc}{hint}") from None
