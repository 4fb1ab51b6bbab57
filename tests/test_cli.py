"""One CLI grammar (dpkid/cli/common.py), checked on every command of the real parser.

Commands run in-process through ``dpkid.cli.main.main(argv)``; a few run as the
installed console script. "A node nobody runs" is a real home written by
``dpkid testnet`` and never started: everything local is in place, and only the
node is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dpkid.cli.common import EXIT_HELP, Progress, UsageError, leaf_parsers, parse_host_port
from dpkid.cli.main import build_parser, main
from dpkid.cli.watch import parse_target
from dpkid.client.rpc import app_id_for_tx
from dpkid.client.x509 import ledger_ref_extension
from dpkid.core.crypto import sha256
from dpkid.core.types import Header

pytestmark = pytest.mark.timeout(300)

HEX32 = "00" * 32
HEX20 = "00" * 20
TLS_HOST = "tls.example"  # the test TLS server's name, resolved to 127.0.0.1 (resolve_tls_host)


# ---------------------------------------------------------------------------- helpers


@dataclass
class Run:
    code: int
    out: str
    err: str

    def doc(self) -> Any:
        return json.loads(self.out)

    def line(self) -> str:
        """The one line on stderr (and nothing on stdout): an error for people."""
        assert self.out == "", f"stdout should be empty:\n{self.out}"
        assert self.err.endswith("\n") and self.err.count("\n") == 1, f"not one line:\n{self.err}"
        assert "Traceback" not in self.err
        return self.err.rstrip("\n")


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    home_env: str | None = None,
) -> Run:
    """``dpkid ARGV`` in-process, with DPKID_HOME set to ``home_env`` (or unset)."""
    with monkeypatch.context() as m:
        if home_env is None:
            m.delenv("DPKID_HOME", raising=False)
        else:
            m.setenv("DPKID_HOME", home_env)
        capsys.readouterr()
        code = main(list(argv))
        cap = capsys.readouterr()
    return Run(code, cap.out, cap.err)


def json_error(r: Run, code: int) -> str:
    """Under --json: exit ``code``, stdout exactly one JSON error document, stderr quiet."""
    assert r.code == code, f"exit {r.code}, wanted {code}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    doc = r.doc()
    assert isinstance(doc, dict), r.out
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    assert doc["exit_code"] == code, doc
    assert "\n" not in doc["error"]
    assert r.err == "", f"stderr should be quiet under --json:\n{r.err}"
    return str(doc["error"])


def _pem_cert(
    key: ec.EllipticCurvePrivateKey,
    names: list[str],
    chain_id: str | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    )
    if chain_id is not None:
        b = b.add_extension(ledger_ref_extension(chain_id, 1, bytes(32), 0), critical=False)
    return b.sign(key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---------------------------------------------------------------------------- fixtures


@dataclass
class TlsServer:
    port: int
    sni: list[str | None] = field(default_factory=list)


@contextlib.contextmanager
def tls_server(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, tmp: Path
) -> Iterator[TlsServer]:
    """A TLS server on 127.0.0.1 that completes handshakes and records each SNI."""
    cpath, kpath = tmp / "tls-cert.pem", tmp / "tls-key.pem"
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(_key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cpath), str(kpath))
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.2)
    srv = TlsServer(lsock.getsockname()[1])

    def on_sni(_sock: Any, name: str | None, _ctx: Any) -> None:
        srv.sni.append(name)

    ctx.sni_callback = on_sni
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)  # until the client closes

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        stop.set()
        t.join(timeout=10)
        lsock.close()


@dataclass
class Env:
    tmp: Path
    empty: Path  # an empty directory: not a node home
    stopped: Path  # a real node home whose node nobody runs
    chain_id: str
    genesis: Path
    account_key: Path
    endorser_key: Path
    cert_pem: Path  # a certificate with a ledger reference to this chain
    subject_key: Path
    prepared: Path
    nobody_sock: Path
    tls: TlsServer
    tls_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cli")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "testnet", "--out", str(tmp / "tn"), "--validators", "1", "--endorsers", "1",
                "--accounts", "1", "--json",
            ]
        )  # fmt: skip
    assert code == 0, out.getvalue()
    info = json.loads(out.getvalue())
    empty = tmp / "empty"
    empty.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = tmp / "subject.pem"
    subject.write_bytes(_key_pem(key))
    cert_pem = tmp / "cert.pem"
    cert_pem.write_bytes(
        _pem_cert(key, ["a.example"], info["chain_id"]).public_bytes(serialization.Encoding.PEM)
    )
    raw = b"a signed transaction, as far as the file is concerned"
    prepared = tmp / "prepared.json"
    prepared.write_text(
        json.dumps(
            {
                "kind": "dpkid-prepared-application/v1",
                "chain_id": info["chain_id"],
                "tx": raw.hex(),
                "app_id": app_id_for_tx(sha256(raw)),
            }
        )
    )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = _pem_cert(tls_key, [TLS_HOST], info["chain_id"])
    with tls_server(tls_cert, tls_key, tmp) as tls:
        yield Env(
            tmp=tmp,
            empty=empty,
            stopped=Path(info["nodes"][0]),
            chain_id=info["chain_id"],
            genesis=tmp / "tn" / "genesis.json",
            account_key=Path(info["account_keys"][0]),
            endorser_key=Path(info["endorser_keys"][0]),
            cert_pem=cert_pem,
            subject_key=subject,
            prepared=prepared,
            nobody_sock=tmp / "nobody.sock",
            tls=tls,
            tls_key=tls_key,
        )


@pytest.fixture(autouse=True)
def resolve_tls_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """tls.example is 127.0.0.1 in this process: the connection and TLS are real."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        return real("127.0.0.1" if host == TLS_HOST else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# ---------------------------------------------------------------------------- every command


def commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return list(leaf_parsers(build_parser()))


def is_node_command(p: argparse.ArgumentParser) -> bool:
    """A command that asks a node over RPC: it takes --socket."""
    return "--socket" in p._option_string_actions


def sample(dest: str, e: Env) -> str:
    """A well-formed value for an argument, by its dest."""
    values = {
        "cert": str(e.cert_pem),
        "cert_id": HEX32,
        "id": HEX32,
        "app_id": HEX32,
        "app": HEX32,
        "address": HEX20,
        "to": HEX20,
        "amount": "1",
        "account_key": str(e.account_key),
        "endorser_key": str(e.endorser_key),
        "domain": "a.example",
        "reason": "checked",
        "file": str(e.prepared),
        "method": "status",
        "params": "{}",
        "target": f"{TLS_HOST}:{e.tls.port}",
        "out": str(e.tmp / "out"),
        "scenario": str(e.tmp / "scenario.toml"),
        "manifest": str(e.tmp / "chaos.toml"),
        "listen": "127.0.0.1:1",
        "server": "http://127.0.0.1:1/directory",
        "grant_id": HEX32,
    }
    assert dest in values, f"add a sample value for the argument {dest!r} to sample()"
    return values[dest]


# What a command needs beyond its argparse-required arguments to get to the node.
EXTRA: dict[tuple[str, ...], Callable[[Env], list[str]]] = {
    ("cert", "apply"): lambda e: ["--domain", "a.example", "--cert-key", str(e.subject_key)],
}


def node_argv(path: tuple[str, ...], p: argparse.ArgumentParser, e: Env) -> list[str]:
    """PATH and well-formed arguments: what a user who made no mistake would type."""
    argv = list(path)
    for a in p._actions:
        required = a.required if a.option_strings else a.nargs not in ("*",)
        if not required or isinstance(a, (argparse._HelpAction,)):
            continue
        value = next(iter(a.choices)) if a.choices else sample(a.dest, e)
        argv += [a.option_strings[0], str(value)] if a.option_strings else [str(value)]
    extra = EXTRA.get(path)
    return argv + (extra(e) if extra else [])


def test_every_command_has_help_json_and_the_exit_scheme_in_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cmds = commands()
    assert len(cmds) > 30  # the walk found the subcommands of the groups too
    for path, p in cmds:
        with pytest.raises(SystemExit) as exc:
            run(capsys, monkeypatch, *path, "--help")
        assert exc.value.code == 0, path
        text = capsys.readouterr().out
        assert text.startswith("usage: dpkid " + " ".join(path)), path
        assert "--json" in text, path
        assert " ".join(EXIT_HELP.split()) in " ".join(text.split()), path
        # Old spellings are hidden aliases at most; one name for each thing.
        for old in (r"--trust(?![-\w])", r"--key\b", r"--account(?![-\w])", r"--new-key\b"):
            assert not re.search(old, text), (path, old)
        if is_node_command(p):
            for flag in ("--home", "--socket", "--rpc", "DPKID_HOME"):
                assert flag in text, (path, flag)
    names = {path for path, _ in cmds}
    # One command for one job: `cert export`; `export-cert` is a hidden alias.
    assert ("cert", "export") in names and ("export-cert",) in names
    with pytest.raises(SystemExit):
        run(capsys, monkeypatch, "--help")
    top = capsys.readouterr().out
    assert "export-cert" not in top and "tls-check" in top


def test_every_node_command_without_a_node(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty home, a home nobody runs, a dead socket: exit 2 and a JSON error,
    the same under DPKID_HOME as under --home."""
    node_cmds = [(path, p) for path, p in commands() if is_node_command(p)]
    assert len(node_cmds) > 20
    for path, p in node_cmds:
        argv = node_argv(path, p, env)
        has_genesis = "--genesis" in p._option_string_actions
        where = " ".join(argv)

        # 1. --home of an empty directory, and the same directory as DPKID_HOME.
        by_flag = run(capsys, monkeypatch, *argv, "--home", str(env.empty), "--json")
        err = json_error(by_flag, 2)
        assert str(env.empty) in err, (where, err)
        by_env = run(capsys, monkeypatch, *argv, "--json", home_env=str(env.empty))
        assert (by_env.code, by_env.out, by_env.err) == (by_flag.code, by_flag.out, by_flag.err)

        # 2. A real home whose node is not running: everything local is fine, the
        #    node cannot be reached, exit 2; DPKID_HOME again the same.
        r = run(capsys, monkeypatch, *argv, "--home", str(env.stopped), "--json")
        err = json_error(r, 2)
        assert "cannot reach the node" in err and str(env.stopped) in err, (where, err)
        by_env = run(capsys, monkeypatch, *argv, "--json", home_env=str(env.stopped))
        assert by_env.out == r.out, where
        # Without --json: the same, as one line on stderr naming the command.
        human = run(capsys, monkeypatch, *argv, home_env=str(env.stopped))
        assert human.code == 2
        line = human.line()
        assert line.startswith(f"dpkid {' '.join(path)}: cannot reach the node"), line

        # 3. A socket path nobody listens on (with the trust root given, if it takes one).
        extra = ["--genesis", str(env.genesis)] if has_genesis else []
        r = run(capsys, monkeypatch, *argv, "--socket", str(env.nobody_sock), *extra, "--json")
        err = json_error(r, 2)
        if has_genesis or path != ("cert", "apply"):  # apply: no --home, no escrow default
            assert f"cannot reach the node at {env.nobody_sock}" in err, (where, err)

        # 4. A TCP listener nobody runs, named by --rpc.
        token = env.stopped / "rpc_token"
        r = run(capsys, monkeypatch, *argv, "--rpc", "127.0.0.1:1", "--rpc-token", str(token),
                *extra, "--json")  # fmt: skip
        json_error(r, 2)


def _local(path: tuple[str, ...]) -> bool:
    return path in LOCAL


def _check_init(e: Env, run_: Callable[..., Run]) -> None:
    new = e.tmp / "init-a"
    r = run_("init", "--home", str(new), "--json")
    assert r.code == 0 and r.doc()["node_key"] == str(new / "node_key.json")
    assert "exists" in json_error(run_("init", "--home", str(new), "--json"), 2)
    by_env = e.tmp / "init-b"
    r = run_("init", "--json", home_env=str(by_env))
    assert r.code == 0 and (by_env / "node_key.json").exists()
    assert "--home" in json_error(run_("init", "--json"), 2)


def _check_testnet(e: Env, run_: Callable[..., Run]) -> None:
    out = e.tmp / "tn2"
    r = run_("testnet", "--out", str(out), "--validators", "1", "--json")
    assert r.code == 0 and len(r.doc()["nodes"]) == 1
    assert "not empty" in json_error(run_("testnet", "--out", str(out), "--json"), 2)


def _check_start(e: Env, run_: Callable[..., Run]) -> None:
    by_flag = run_("start", "--home", str(e.empty), "--json")
    assert "not a node home" in json_error(by_flag, 2) and str(e.empty) in by_flag.out
    assert run_("start", "--json", home_env=str(e.empty)).out == by_flag.out
    assert "--home" in json_error(run_("start", "--json"), 2)


def _check_monitor(e: Env, run_: Callable[..., Run]) -> None:
    argv = ["monitor", "--domain", "a.example", "--state-dir", str(e.tmp / "mon")]
    by_flag = run_(*argv, "--home", str(e.empty), "--json")
    assert "not a node home" in json_error(by_flag, 2) and str(e.empty) in by_flag.out
    assert run_(*argv, "--json", home_env=str(e.empty)).out == by_flag.out
    assert "--domain" in json_error(run_("monitor", "--domain", "a..b", "--json"), 2)
    err = json_error(run_(*argv, "--peer", "/ip4/127.0.0.1/tcp/1/p2p/x", "--json"), 2)
    assert "--genesis" in err


def _check_walkthrough(e: Env, run_: Callable[..., Run]) -> None:
    r = run_("walkthrough", "--json")
    assert r.code in (0, 1) and r.doc()["steps"], r.err


def _check_bench(e: Env, run_: Callable[..., Run]) -> None:
    assert "invalid choice" in json_error(run_("bench", "nonsense", "--json"), 2)


def _check_vectors(e: Env, run_: Callable[..., Run]) -> None:
    r = run_("vectors", "--check", "--out", str(e.empty), "--json")
    assert r.code == 1 and r.doc()["match"] is False and r.doc()["differ"]


def _check_demo(e: Env, run_: Callable[..., Run]) -> None:
    assert "--repeat" in json_error(run_("demo", "--repeat", "0", "--json"), 2)


def _check_fuzz(e: Env, run_: Callable[..., Run]) -> None:
    assert "--inputs" in json_error(run_("fuzz", "--inputs", "0", "--json"), 2)
    r = run_("fuzz", "--inputs", "5", "--decoder", "domain", "--json")
    assert r.code == 0 and r.doc()["decoders"][0]["inputs"] == 5


def _check_chaos_run(e: Env, run_: Callable[..., Run]) -> None:
    missing = e.tmp / "missing-chaos.toml"
    assert str(missing) in json_error(run_("chaos", "run", str(missing), "--json"), 2)
    bad = e.tmp / "bad-chaos.toml"
    bad.write_text('[[perturbation]]\nkind = "explode"\nat_s = 1\nnodes = [0]\n')
    assert "kind must be one of" in json_error(run_("chaos", "run", str(bad), "--json"), 2)


def _check_sim_run(e: Env, run_: Callable[..., Run]) -> None:
    missing = e.tmp / "missing.toml"
    assert str(missing) in json_error(run_("sim", "run", str(missing), "--json"), 2)


def _check_account_new(e: Env, run_: Callable[..., Run]) -> None:
    key = e.tmp / "new-account.json"
    r = run_("account", "new", "--out", str(key), "--json")
    assert r.code == 0 and len(r.doc()["address"]) == 40
    assert "exists" in json_error(run_("account", "new", "--out", str(key), "--json"), 2)


# Commands that ask no node over RPC, each with a run of its own.
LOCAL: dict[tuple[str, ...], Callable[[Env, Callable[..., Run]], None]] = {
    ("init",): _check_init,
    ("testnet",): _check_testnet,
    ("start",): _check_start,
    ("monitor",): _check_monitor,
    ("walkthrough",): _check_walkthrough,
    ("bench",): _check_bench,
    ("vectors",): _check_vectors,
    ("demo",): _check_demo,
    ("sim", "run"): _check_sim_run,
    ("fuzz",): _check_fuzz,
    ("chaos", "run"): _check_chaos_run,
    ("account", "new"): _check_account_new,
}


def test_every_local_command(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    local = {path for path, p in commands() if not is_node_command(p)}
    assert local == set(LOCAL), "classify the new command in LOCAL"

    def run_(*argv: str, home_env: str | None = None) -> Run:
        return run(capsys, monkeypatch, *argv, home_env=home_env)

    parsers = dict(commands())
    for path in sorted(local):
        # A usage error is exit 2, as JSON under --json and one line without.
        argv = node_argv(path, parsers[path], env)
        err = json_error(run_(*argv, "--no-such-flag", "--json"), 2)
        assert err.startswith("unknown argument --no-such-flag"), err
        line = run_(*argv, "--no-such-flag").line()
        assert line == (
            f"dpkid {' '.join(path)}: unknown argument --no-such-flag "
            f"(see dpkid {' '.join(path)} --help)"
        )
        LOCAL[path](env, run_)


def test_console_script(env: Env) -> None:
    """The installed `dpkid` script: help, a usage error, DPKID_HOME."""
    script = Path(sys.executable).parent / "dpkid"
    assert script.exists(), "pip install -e . installs the dpkid console script"

    def sh(*args: str, home: str | None = None) -> subprocess.CompletedProcess[str]:
        e = {k: v for k, v in os.environ.items() if k != "DPKID_HOME"}
        if home is not None:
            e["DPKID_HOME"] = home
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, timeout=60, env=e
        )

    r = sh("--help")
    assert r.returncode == 0 and "exit status" in r.stdout
    r = sh("status", "--bogus", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["exit_code"] == 2 and r.stderr == ""
    r = sh("status", "--json", home=str(env.stopped))
    assert r.returncode == 2, r.stderr
    assert str(env.stopped) in json.loads(r.stdout)["error"]
    r = sh("validators", home=str(env.stopped))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "cannot reach the node" in r.stderr


# ---------------------------------------------------------------------------- one-line errors


def test_key_file_that_is_not_json(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = env.tmp / "x.json"
    bad.write_text("garbage\n")
    r = run(capsys, monkeypatch, "account", "show", "--account-key", str(bad), "--home",
            str(env.stopped))  # fmt: skip
    assert r.code == 2
    assert r.line() == f"dpkid account show: key file {bad} is not JSON (line 1, column 1)"
    r = run(capsys, monkeypatch, "endorse", "list-pending", "--endorser-key", str(bad), "--json")
    assert json_error(r, 2) == f"key file {bad} is not JSON (line 1, column 1)"


def test_key_file_without_seed(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = env.tmp / "bad.json"
    bad.write_text("{}\n")
    r = run(capsys, monkeypatch, "account", "transfer", "--account-key", str(bad), "--to", HEX20,
            "--amount", "5", "--home", str(env.stopped))  # fmt: skip
    assert r.code == 2
    assert r.line() == (
        f'dpkid account transfer: key file {bad} is not a dpkid key file: it has no "seed"'
    )
    bad.write_text('{"seed": "abc"}')
    r = run(capsys, monkeypatch, "account", "show", "--account-key", str(bad))
    assert r.line() == f'dpkid account show: key file {bad}: "seed" is not 64 hex digits'
    missing = env.tmp / "missing.json"
    r = run(capsys, monkeypatch, "account", "show", "--account-key", str(missing))
    assert r.line() == f"dpkid account show: key file {missing} does not exist"


def test_key_of_the_wrong_kind(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag says which kind of key file; the wrong kind is named as such."""
    r = run(capsys, monkeypatch, "account", "show", "--account-key", str(env.subject_key))
    line = r.line()
    assert r.code == 2 and f"key file {env.subject_key} is a PEM file" in line
    assert "--cert-key" in line
    r = run(capsys, monkeypatch, "cert", "apply", "--type", "dv", "--domain", "a.example",
            "--cert-key", str(env.account_key), "--account-key", str(env.account_key),
            "--home", str(env.stopped))  # fmt: skip
    line = r.line()
    assert r.code == 2 and f"{env.account_key} is a dpkid key file" in line
    r = run(capsys, monkeypatch, "cert", "export", HEX32, "--cert-key", str(env.account_key),
            "--home", str(env.stopped), "--json")  # fmt: skip
    assert f"{env.account_key} is a dpkid key file" in json_error(r, 2)
    # The old spellings still work, as hidden aliases.
    r = run(capsys, monkeypatch, "account", "show", "--key", str(env.subject_key))
    assert r.code == 2 and "is a PEM file" in r.line()


def test_verify_garbage_pem_blames_the_file_not_the_node(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = env.tmp / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    r = run(capsys, monkeypatch, "verify", str(garbage), "--home", str(env.stopped))
    assert r.code == 2
    assert r.line() == f"dpkid verify: {garbage} is not a PEM certificate (nor a DER one)"
    r = run(capsys, monkeypatch, "verify", str(env.subject_key), "--home", str(env.stopped),
            "--json")  # fmt: skip
    err = json_error(r, 2)
    assert err == f"{env.subject_key} is not a PEM certificate (it holds a PRIVATE KEY)"
    assert "node" not in err
    missing = env.tmp / "missing.pem"
    r = run(capsys, monkeypatch, "verify", str(missing), "--home", str(env.stopped))
    assert r.line() == f"dpkid verify: certificate {missing} does not exist"


def test_verify_certificate_of_another_chain_or_none_is_not_valid(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for chain, why in (("other-chain", "from chain 'other-chain'"), (None, "no dpkid ledger")):
        pem = env.tmp / f"foreign-{chain}.pem"
        pem.write_bytes(
            _pem_cert(key, ["a.example"], chain).public_bytes(serialization.Encoding.PEM)
        )
        r = run(capsys, monkeypatch, "verify", str(pem), "--genesis", str(env.genesis), "--json")
        assert r.code == 1 and r.err == ""
        doc = r.doc()
        assert doc["valid"] is False and why in doc["reason"]
        r = run(capsys, monkeypatch, "verify", str(pem), "--home", str(env.stopped))
        assert r.code == 1 and r.out.startswith("NOT VALID:") and why in r.out


def test_trust_root_errors(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = env.tmp / "genesis-bad.json"
    bad.write_text("not json")
    r = run(capsys, monkeypatch, "verify", str(env.cert_pem), "--genesis", str(bad))
    assert r.line() == f"dpkid verify: genesis {bad} is not JSON (line 1, column 1)"
    # The old spelling, a hidden alias.
    r = run(capsys, monkeypatch, "audit", "--trust", str(bad), "--json")
    assert json_error(r, 2) == f"genesis {bad} is not JSON (line 1, column 1)"
    r = run(capsys, monkeypatch, "verify", str(env.cert_pem), "--socket", str(env.nobody_sock))
    assert "give the trust root: --genesis FILE" in r.line()


def test_unknown_flag_and_missing_argument(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = run(capsys, monkeypatch, "status", "--bogus")
    assert r.code == 2
    assert r.line() == "dpkid status: unknown argument --bogus (see dpkid status --help)"
    r = run(capsys, monkeypatch, "status", "--bogus", "--json")
    assert json_error(r, 2) == "unknown argument --bogus (see dpkid status --help)"
    r = run(capsys, monkeypatch, "cert", "apply", "--json")
    err = json_error(r, 2)
    assert "required" in err and "--type" in err and "dpkid cert apply --help" in err
    r = run(capsys, monkeypatch, "cert", "revoke", HEX32, "--reason", "bogus", "--json")
    assert "invalid choice" in json_error(r, 2)
    r = run(capsys, monkeypatch, "nonsense")
    assert r.code == 2 and "invalid choice: 'nonsense'" in r.line()


def test_local_file_errors_name_the_file(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = ["--home", str(env.stopped)]
    r = run(capsys, monkeypatch, "rpc", "status", "{oops", *h)
    assert r.line().startswith("dpkid rpc: PARAMS '{oops' are not JSON (line 1, column 2)")
    state = env.tmp / "audit-state.json"
    state.write_text("[1, 2")
    r = run(capsys, monkeypatch, "audit", "--state", str(state), *h)
    assert r.line() == f"dpkid audit: audit state file {state} is not JSON (line 1, column 6)"
    state.write_text('{"log": 3}')
    r = run(capsys, monkeypatch, "audit", "--state", str(state), *h, "--json")
    assert f"{state} is not an audit state file" in json_error(r, 2)
    prepared = env.tmp / "not-prepared.json"
    prepared.write_text('{"kind": "something else"}')
    r = run(capsys, monkeypatch, "cert", "submit", str(prepared), *h)
    assert r.line().startswith(f"dpkid cert submit: {prepared} is not a prepared application")
    r = run(capsys, monkeypatch, "cert", "status", "xyz", *h)
    assert (
        r.line()
        == "dpkid cert status: certificate, application or authorization id must be hex, got 'xyz'"
    )
    r = run(capsys, monkeypatch, "tls-check", "a:b:c:d:e", *h)
    assert r.line() == "dpkid tls-check: the server 'a:b:c:d:e' is not HOST:PORT"


# ---------------------------------------------------------------------------- tls-check


def test_tls_check_port_defaults_to_443() -> None:
    assert parse_target("example.com") == ("example.com", 443)
    assert parse_target("example.com:8443") == ("example.com", 8443)
    assert parse_target("[::1]") == ("::1", 443)
    assert parse_target("[::1]:444") == ("::1", 444)
    assert parse_target("::1") == ("::1", 443)
    for bad in ("example.com:0", "example.com:x", "[::1", ":443", "a:b:c", "[::1]x"):
        with pytest.raises(UsageError):
            parse_target(bad)
    with pytest.raises(UsageError):
        parse_host_port("127.0.0.1", "--rpc")  # --rpc has no default port


def test_tls_check_connects_to_443_without_a_port(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = run(capsys, monkeypatch, "tls-check", "127.0.0.1", "--timeout", "3", "--home",
            str(env.stopped), "--json")  # fmt: skip
    # Whatever port 443 does here (most likely: nothing listens), that is where it went.
    assert r.code in (1, 2, 3) and "127.0.0.1:443" in r.out, r.out


def test_tls_check_checks_the_host_it_connected_to(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = ["--home", str(env.stopped)]
    port = env.tls.port
    # The server's certificate names tls.example; connected by IP (or as localhost)
    # without --name, that is not the host: NOT VALID before any node is asked.
    r = run(capsys, monkeypatch, "tls-check", f"127.0.0.1:{port}", *h, "--json")
    assert r.code == 1 and r.err == ""
    doc = r.doc()
    assert doc["valid"] is False and doc["status"] == "mismatch"
    assert doc["name"] == "127.0.0.1" and "names tls.example, not 127.0.0.1" in doc["reason"]
    env.tls.sni.clear()
    r = run(capsys, monkeypatch, "tls-check", f"localhost:{port}", *h)
    assert r.code == 1 and r.out.startswith(f"NOT VALID: the certificate of localhost:{port}")
    assert "names tls.example, not localhost (give --name DOMAIN" in r.out
    assert env.tls.sni == ["localhost"]
    # --name another domain: sent as SNI, and not named by the certificate either.
    env.tls.sni.clear()
    r = run(capsys, monkeypatch, "tls-check", f"127.0.0.1:{port}", "--name", "other.example", *h)
    assert r.code == 1 and "names tls.example, not other.example" in r.out
    assert env.tls.sni == ["other.example"]
    # By host name without --name: SNI tls.example, the certificate names it, and
    # the ledger is asked next (here: the node is not running, exit 2).
    env.tls.sni.clear()
    r = run(capsys, monkeypatch, "tls-check", f"{TLS_HOST}:{port}", *h, "--json")
    assert "cannot reach the node" in json_error(r, 2)
    assert env.tls.sni == [TLS_HOST]
    # --name with the IP: the same, and a --name that is no domain is a usage error.
    r = run(capsys, monkeypatch, "tls-check", f"127.0.0.1:{port}", "--name", TLS_HOST, *h)
    assert r.code == 2 and "cannot reach the node" in r.line()
    r = run(capsys, monkeypatch, "tls-check", f"127.0.0.1:{port}", "--name", "a..b", *h)
    assert r.code == 2 and "--name 'a..b' is not a domain name" in r.line()


# ---------------------------------------------------------------------------- a fake node on TCP


@contextlib.contextmanager
def fake_tcp_node(token: str, answers: dict[str, Any]) -> Iterator[tuple[int, list[str]]]:
    """A TCP JSON-RPC listener (protocol/RPC.md §1.2) that answers from ``answers``."""
    calls: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            first = self.rfile.readline().strip()
            if first != f"Bearer {token}".encode():
                err = {"code": -32001, "message": "unauthorized: send 'Bearer <token>' first"}
                self.wfile.write(json.dumps({"jsonrpc": "2.0", "id": None, "error": err}).encode())
                self.wfile.write(b"\n")
                return
            for line in self.rfile:
                req = json.loads(line)
                calls.append(req["method"])
                if req["method"] in answers:
                    reply = {"jsonrpc": "2.0", "id": req["id"], "result": answers[req["method"]]}
                else:
                    reply = {
                        "jsonrpc": "2.0",
                        "id": req["id"],
                        "error": {"code": -32601, "message": "method not found"},
                    }
                self.wfile.write(json.dumps(reply).encode() + b"\n")

    socketserver.ThreadingTCPServer.daemon_threads = True
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], calls
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


def test_rpc_over_tcp_with_the_token(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = env.tmp / "token"
    token.write_text("s3cret\n")
    status = {"chain_id": env.chain_id, "height": 7}
    with fake_tcp_node("s3cret", {"status": status}) as (port, calls):
        r = run(capsys, monkeypatch, "status", "--rpc", f"127.0.0.1:{port}", "--rpc-token",
                str(token), "--json")  # fmt: skip
        assert r.code == 0 and r.doc() == status
        r = run(capsys, monkeypatch, "rpc", "status", "--rpc", f"127.0.0.1:{port}",
                "--rpc-token", str(token))  # fmt: skip
        assert r.code == 0 and json.loads(r.out) == status
        r = run(capsys, monkeypatch, "rpc", "no_such", "--rpc", f"127.0.0.1:{port}",
                "--rpc-token", str(token), "--json")  # fmt: skip
        assert "method not found" in json_error(r, 2)
        assert calls == ["status", "status", "no_such"]
        wrong = env.tmp / "wrong-token"
        wrong.write_text("nope\n")
        r = run(capsys, monkeypatch, "status", "--rpc", f"127.0.0.1:{port}", "--rpc-token",
                str(wrong))  # fmt: skip
        assert r.code == 2 and "refused the RPC token" in r.line()
    r = run(capsys, monkeypatch, "status", "--rpc", "127.0.0.1:1", "--json")
    assert "--rpc-token" in json_error(r, 2)
    r = run(capsys, monkeypatch, "status", "--rpc", "/tmp/x.sock", "--json")
    assert "give a socket path as --socket PATH" in json_error(r, 2)
    r = run(capsys, monkeypatch, "status", "--rpc", "localhost", "--json")
    assert "is not HOST:PORT" in json_error(r, 2)
    r = run(capsys, monkeypatch, "status", "--rpc", "localhost:1", "--socket", "x", "--json")
    assert "not both" in json_error(r, 2)


def test_transfer_refused_when_the_balance_is_too_low(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = env.tmp / "token2"
    token.write_text("t\n")
    acct = {"balance": 50, "nonce": 0, "next_nonce": 0, "exists": True, "pubkey": "", "height": 3}
    with fake_tcp_node("t", {"account_get": acct, "status": {"chain_id": env.chain_id}}) as (
        port,
        calls,
    ):
        argv = ["account", "transfer", "--account-key", str(env.account_key), "--to", HEX20,
                "--rpc", f"127.0.0.1:{port}", "--rpc-token", str(token)]  # fmt: skip
        r = run(capsys, monkeypatch, *argv, "--amount", "41")  # 41 + fee 10 > 50
        assert r.code == 1
        line = r.line()
        assert "has 50, too little to send 41 with fee 10 (51 needed); nothing was sent" in line
        r = run(capsys, monkeypatch, *argv, "--amount", "41", "--json")
        assert json_error(r, 1) and r.doc()["needed"] == 51
        assert "tx_submit" not in calls and calls.count("account_get") == 2


# ---------------------------------------------------------------------------- progress


def test_progress_goes_to_stderr_and_is_quiet_under_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dpkid.cli.verify import header_progress

    now = [0.0]
    p = Progress("dpkid verify", quiet=False, every_s=1.0, clock=lambda: now[0])
    on_header = header_progress(p)

    @dataclass
    class H:
        height: int

    for h in range(1, 6):
        now[0] += 0.6
        on_header(cast(Header, H(h)), 5)
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.splitlines() == [
        "dpkid verify: verifying headers from genesis: 2/5",
        "dpkid verify: verifying headers from genesis: 4/5",
        "dpkid verify: verified 5 headers",
    ]
    quiet = Progress("dpkid verify", quiet=True, clock=lambda: now[0])
    q = header_progress(quiet)
    for h in range(1, 6):
        now[0] += 5
        q(cast(Header, H(h)), 5)
    assert capsys.readouterr() == ("", "")
