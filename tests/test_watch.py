"""TLS check against a live local TLS server, monitors, and the auditor."""

from __future__ import annotations

import json
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dpkid.client.x509 import to_pem, to_x509
from dpkid.core import codec
from dpkid.core.consensus.messages import Commit, CommitSig
from dpkid.core.keys import spki_der_of
from dpkid.core.types import Revoke
from dpkid.daemon.daemon import NodeDaemon
from tests.test_verify import World, _issue, _until, run

pytestmark = pytest.mark.slow


def _tls_server(cert_pem: Path, key_pem: Path) -> tuple[int, threading.Event]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_pem), str(key_pem))
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        with sock:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"hello\n")
                except (ssl.SSLError, OSError):
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return port, stop


async def _cli(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "dpkid", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    )


def test_tls_check_live_server_valid_then_revoked(tmp_path: Path) -> None:
    async def body(w: World, d: NodeDaemon) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cid = await _issue(w, d, "DV", "tls.example", spki_der_of(key.public_key()))
        cert = d.core.state.certificate(cid)
        assert cert is not None
        # The holder exports with its key: a self-signed X.509 that ordinary TLS stacks load.
        cpath, kpath = tmp_path / "tls.pem", tmp_path / "tls.key"
        cpath.write_bytes(
            to_pem(to_x509(cert, w.genesis.chain_id, d.core.state.height, signing_key=key))
        )
        kpath.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        port, stop = _tls_server(cpath, kpath)
        try:
            r = await _cli(
                "tls-check",
                f"127.0.0.1:{port}",
                "--name",
                "tls.example",
                "--home",
                str(w.home),
                "--json",
            )
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["status"] == "valid"
            r = await _cli(
                "tls-check", f"127.0.0.1:{port}", "--name", "other.example", "--home", str(w.home)
            )
            assert r.returncode == 1 and "mismatch" in r.stdout
            await w.submit(d, w.account, Revoke(cid, 5))
            await _until(lambda: d.core.state.certificate(cid).status == "revoked", "revocation")  # type: ignore[union-attr]
            h = d.core.state.height
            await _until(lambda: d.core.state.height >= h + 1, "next header")
            r = await _cli(
                "tls-check", f"127.0.0.1:{port}", "--name", "tls.example", "--home", str(w.home)
            )
            assert r.returncode == 1 and "revoked" in r.stdout
        finally:
            stop.set()

    run(tmp_path, body)


def test_monitor_reports_issuance_alerts_and_catches_up(tmp_path: Path) -> None:
    async def body(w: World, d: NodeDaemon) -> None:
        known = ec.generate_private_key(ec.SECP256R1())
        known_pem = tmp_path / "known.pem"
        known_pem.write_bytes(
            known.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        state_dir = tmp_path / "mon"
        out_path = tmp_path / "monitor.out"

        def start_monitor() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dpkid",
                    "monitor",
                    "--domain",
                    "watched.example",
                    "--known-key",
                    str(known_pem),
                    "--home",
                    str(w.home),
                    "--state-dir",
                    str(state_dir),
                    "--json",
                ],
                stdout=open(out_path, "ab"),
                stderr=subprocess.DEVNULL,
            )

        def events() -> list[dict[str, Any]]:
            if not out_path.exists():
                return []
            return [json.loads(x) for x in out_path.read_text().splitlines() if x.startswith("{")]

        mon = start_monitor()
        try:
            ok_cert = await _issue(w, d, "DV", "watched.example", spki_der_of(known.public_key()))
            await _until(
                lambda: any(e["cert_id"] == ok_cert.hex() for e in events()), "monitor event", 90
            )
            ev = next(e for e in events() if e["cert_id"] == ok_cert.hex())
            assert ev["event"] == "issued" and "alert" not in ev
            rogue = ec.generate_private_key(ec.SECP256R1())
            rogue_cert = await _issue(
                w, d, "DV", "www.watched.example", spki_der_of(rogue.public_key())
            )
            await _until(
                lambda: any(e["cert_id"] == rogue_cert.hex() for e in events()), "alert", 90
            )
            ev = next(e for e in events() if e["cert_id"] == rogue_cert.hex())
            assert ev["alert"] == "certificate key is not a known key"
            # Unrelated domains are not reported.
            other = await _issue(w, d, "DV", "unrelated.example", spki_der_of(rogue.public_key()))
            # Stop the monitor, issue while it is down, restart: nothing is missed.
            mon.terminate()
            mon.wait(timeout=20)
            missed = await _issue(
                w, d, "DV", "api.watched.example", spki_der_of(known.public_key())
            )
            mon = start_monitor()
            await _until(
                lambda: any(e["cert_id"] == missed.hex() for e in events()), "catch-up event", 90
            )
            assert not any(e["cert_id"] == other.hex() for e in events())
            ids = [e["cert_id"] for e in events() if e["event"] == "issued"]
            assert len(ids) == len(set(ids)), "an event was reported twice"
        finally:
            mon.terminate()
            try:
                mon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                mon.kill()

    run(tmp_path, body)


def test_audit_honest_then_tampered_store(tmp_path: Path) -> None:
    async def body(w: World, d: NodeDaemon) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        await _issue(w, d, "DV", "audited.example", spki_der_of(key.public_key()))
        state = tmp_path / "audit.json"
        r = await _cli("audit", "--home", str(w.home), "--state", str(state), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        rep = json.loads(r.stdout)
        assert rep["ok"] and rep["problems"] == []
        await _issue(w, d, "DV", "audited2.example", spki_der_of(key.public_key()))
        r = await _cli("audit", "--home", str(w.home), "--state", str(state), "--json")
        rep = json.loads(r.stdout)
        assert rep["ok"] and any("consistent" in f for f in rep["findings"])
        # Tamper with a stored commit: one forged signature byte.
        db = sqlite3.connect(str(w.home / "data" / "dpkid.sqlite"))
        raw = db.execute("SELECT seen_commit FROM blocks WHERE height = 2").fetchone()[0]
        c = codec.decode(bytes(raw), Commit)
        s0 = c.sigs[0]
        bad = bytearray(s0.sig)
        bad[0] ^= 0xFF
        forged = Commit(
            c.height, c.round, c.block_hash, [CommitSig(s0.validator, s0.timestamp_ms, bytes(bad))]
        )
        db.execute("UPDATE blocks SET seen_commit = ? WHERE height = 2", (codec.encode(forged),))
        db.commit()
        db.close()
        r = await _cli("audit", "--home", str(w.home), "--json")
        rep = json.loads(r.stdout)
        assert r.returncode == 1 and not rep["ok"]
        assert any("commit for header 2" in p for p in rep["problems"])

    run(tmp_path, body)


_ = time
