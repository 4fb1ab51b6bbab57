"""`dpkid challenge`: the applicant's side of domain validation (SPEC §7.3).

    dpkid challenge serve --app ID [--port P] [--host H] (--home DIR | --socket PATH)
        serve the application's http-01 responses until Ctrl-C
    dpkid challenge dns-record --app ID (--home DIR | --socket PATH) [--json]
        print the dns-01 TXT records to publish

Both ask a node for the application (`application_get`), whose result carries
the challenge values every validator will check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dpkid.core.challenges import base_name


def _fetch(args: argparse.Namespace) -> dict[str, Any] | None:
    from dpkid.client.rpc import RpcClientError, call_sync

    app_id = args.app.strip().lower()
    if len(app_id) != 64 or any(c not in "0123456789abcdef" for c in app_id):
        print("dpkid challenge: --app is a 64-hex-digit application id", file=sys.stderr)
        return None
    try:
        res = call_sync(
            Path(args.home or "."), "application_get", {"app_id": app_id}, socket_path=args.socket
        )
    except RpcClientError as exc:
        print(f"dpkid challenge: {exc.message}", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"dpkid challenge: cannot reach the node: {exc}", file=sys.stderr)
        return None
    app: dict[str, Any] = res["application"]
    return app


def cmd_serve(args: argparse.Namespace) -> int:
    from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap

    app = _fetch(args)
    if app is None:
        return 1
    ch = app["challenge"]
    hosts = sorted({base_name(d) for d in app["domains"] if not d.startswith("*.")})
    if not hosts:
        print("dpkid challenge: only wildcard names: they need dns-01 (see dns-record)")
        return 1
    cmap = ChallengeMap()
    for h in hosts:
        cmap.set(h, ch["token"], ch["key_authorization"])
    try:
        srv = ChallengeHttpServer(cmap, args.host, args.port, verbose=args.verbose).start()
    except OSError as exc:
        print(f"dpkid challenge: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"application {app['app_id']} ({app['status']})")
    print(f"serving http-01 on {args.host}:{srv.port} (Ctrl-C to stop)")
    for h in hosts:
        print(f"  http://{h}{ch['http_path']}")
    print(f"  body: {ch['key_authorization']}")
    if any(d.startswith("*.") for d in app["domains"]):
        print("  wildcard names are not served here: publish dns-01 (dpkid challenge dns-record)")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped")
    finally:
        srv.stop()
    return 0


def cmd_dns_record(args: argparse.Namespace) -> int:
    app = _fetch(args)
    if app is None:
        return 1
    ch = app["challenge"]
    records = []
    seen = set()
    for r in ch["dns"]:
        if r["name"] not in seen:
            seen.add(r["name"])
            records.append(r)
    if args.json:
        print(json.dumps({"app_id": app["app_id"], "records": records}, indent=2))
        return 0
    print(f"; dns-01 for application {app['app_id']} ({app['status']})")
    for r in records:
        print(f'{r["name"]}. 60 IN TXT "{r["value"]}"')
    return 0


def _target(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--home", help="a node's home (its socket is HOME/dpkid.sock)")
    g.add_argument("--socket", help="a node's RPC socket path")


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("challenge", help="serve or print an application's DV challenge")
    csub = c.add_subparsers(dest="challenge_command", metavar="ACTION", required=True)

    s = csub.add_parser("serve", help="serve the http-01 responses until Ctrl-C")
    s.add_argument("--app", required=True, help="application id (hex)")
    s.add_argument(
        "--port", type=int, default=8080, help="must be the validators' http_port (default 8080)"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--verbose", action="store_true", help="log each request")
    _target(s)
    s.set_defaults(func=cmd_serve)

    d = csub.add_parser("dns-record", help="print the dns-01 TXT records to publish")
    d.add_argument("--app", required=True, help="application id (hex)")
    d.add_argument("--json", action="store_true")
    _target(d)
    d.set_defaults(func=cmd_dns_record)
