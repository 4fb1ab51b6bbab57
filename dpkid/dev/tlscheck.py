"""What ordinary TLS software makes of dpkid's threshold-signed certificates:
a Python ``ssl`` handshake against a server on 127.0.0.1 that trusts only the
root, and ``openssl verify`` (with and without the CRL). Used by the demo."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HANDSHAKE_TIMEOUT_S = 10.0
OPENSSL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


def tls_handshake(chain_pem: bytes, key_pem: bytes, root_pem: bytes, hostname: str) -> Outcome:
    """Serve ``chain_pem`` (leaf first) with ``key_pem`` on an ephemeral
    loopback port; connect with a client that trusts only ``root_pem`` and
    checks ``hostname``. ok when the handshake completes and the client saw
    the leaf."""
    with tempfile.TemporaryDirectory(prefix="dpkid-tls-") as d:
        chain, key, root = Path(d) / "chain.pem", Path(d) / "key.pem", Path(d) / "root.pem"
        chain.write_bytes(chain_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
        root.write_bytes(root_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(chain, key)
        client_ctx = ssl.create_default_context(cafile=str(root))
        client_ctx.check_hostname = True
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.settimeout(HANDSHAKE_TIMEOUT_S)
        port = lsock.getsockname()[1]
        errors: list[str] = []

        def serve() -> None:
            try:
                conn, _ = lsock.accept()
                conn.settimeout(HANDSHAKE_TIMEOUT_S)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello from a dpkid certificate\n")
            except (OSError, ssl.SSLError) as exc:
                errors.append(f"server: {exc}")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT_S) as raw,
                client_ctx.wrap_socket(raw, server_hostname=hostname) as tls,
            ):
                data = tls.recv(64)
                version = tls.version()
                peer: dict[str, Any] = dict(tls.getpeercert() or {})
        except ssl.SSLCertVerificationError as exc:
            return Outcome(False, f"certificate rejected: {exc.verify_message}")
        except (OSError, ssl.SSLError) as exc:
            return Outcome(False, f"handshake failed: {exc}")
        finally:
            t.join(HANDSHAKE_TIMEOUT_S)
            lsock.close()
        names = [str(v) for k, v in peer.get("subjectAltName", ()) if k == "DNS"]
        covered = hostname in names or any(
            n.startswith("*.") and hostname.split(".", 1)[-1] == n[2:] for n in names
        )
        ok = data.startswith(b"hello") and covered
        return Outcome(ok, f"{version} handshake as {hostname}; server names {names}")


def openssl_verify(root_pem: bytes, leaf_pem: bytes, crl_pem: bytes | None = None) -> Outcome:
    """``openssl verify -CAfile root.pem [-crl_check -CRLfile crl.pem] leaf.pem``."""
    exe = shutil.which("openssl")
    if exe is None:
        return Outcome(False, "openssl is not installed")
    with tempfile.TemporaryDirectory(prefix="dpkid-openssl-") as d:
        root, leaf = Path(d) / "root.pem", Path(d) / "leaf.pem"
        root.write_bytes(root_pem)
        leaf.write_bytes(leaf_pem)
        argv = [exe, "verify", "-CAfile", str(root)]
        if crl_pem is not None:
            crl = Path(d) / "crl.pem"
            crl.write_bytes(crl_pem)
            argv += ["-crl_check", "-CRLfile", str(crl)]
        out = subprocess.run(
            [*argv, str(leaf)], capture_output=True, text=True, timeout=OPENSSL_TIMEOUT_S
        )
    text = (out.stdout + out.stderr).strip().replace(str(leaf), "leaf.pem")
    return Outcome(out.returncode == 0, " ".join(text.split()))
