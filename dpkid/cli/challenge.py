"""`dpkid challenge`: the applicant's side of domain validation (SPEC §7.3).

    dpkid challenge serve --app ID [--port P] [--host H] [--home DIR | --socket PATH]
        serve the application's http-01 responses until Ctrl-C
    dpkid challenge dns-record --app ID [--home DIR | --socket PATH] [--json]
        print the dns-01 TXT records to publish

Both ask a node for the application (`application_get`), whose result carries
the challenge values every validator will check.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from dpkid.cli.common import (
    EXIT_HELP,
    NOT_FOUND,
    Exit,
    Refused,
    UsageError,
    add_node_args,
    node_client,
    print_json,
)
from dpkid.client.rpc import RpcClientError
from dpkid.core.challenges import base_name


def _fetch(args: argparse.Namespace) -> dict[str, Any]:
    app_id = args.app.strip().lower()
    if len(app_id) != 64 or any(c not in "0123456789abcdef" for c in app_id):
        raise UsageError(f"--app is a 64-hex-digit application id, not {args.app[:80]!r}")
    try:
        return node_client(args).application(app_id)
    except RpcClientError as exc:
        if exc.code == NOT_FOUND:
            raise Refused(f"no application {app_id} on the ledger") from None
        raise


def cmd_serve(args: argparse.Namespace) -> int:
    from dpkid.dev.http_server import ChallengeHttpServer, ChallengeMap

    app = _fetch(args)
    ch = app["challenge"]
    hosts = sorted({base_name(d) for d in app["domains"] if not d.startswith("*.")})
    if not hosts:
        raise Refused(
            f"application {app['app_id']} names only wildcards: they need dns-01 "
            "(dpkid challenge dns-record)"
        )
    cmap = ChallengeMap()
    for h in hosts:
        cmap.set(h, ch["token"], ch["key_authorization"])
    try:
        srv = ChallengeHttpServer(cmap, args.host, args.port, verbose=args.verbose).start()
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    urls = [f"http://{h}{ch['http_path']}" for h in hosts]
    wildcards = any(d.startswith("*.") for d in app["domains"])
    if args.json:
        print_json(
            {
                "app_id": app["app_id"],
                "status": app["status"],
                "listen": f"{args.host}:{srv.port}",
                "urls": urls,
                "body": ch["key_authorization"],
            }
        )
    else:
        print(f"application {app['app_id']} ({app['status']})")
        print(f"serving http-01 on {args.host}:{srv.port} (Ctrl-C to stop)")
        for u in urls:
            print(f"  {u}")
        print(f"  body: {ch['key_authorization']}")
        if wildcards:
            print(
                "  wildcard names are not served here: publish dns-01 (dpkid challenge dns-record)"
            )
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        if not args.json:
            print("stopped", file=sys.stderr)
    finally:
        srv.stop()
    return Exit.OK


def cmd_dns_record(args: argparse.Namespace) -> int:
    app = _fetch(args)
    ch = app["challenge"]
    records = []
    seen = set()
    for r in ch["dns"]:
        if r["name"] not in seen:
            seen.add(r["name"])
            records.append(r)
    if args.json:
        print_json({"app_id": app["app_id"], "records": records})
        return Exit.OK
    print(f"; dns-01 for application {app['app_id']} ({app['status']})")
    for r in records:
        print(f'{r["name"]}. 60 IN TXT "{r["value"]}"')
    return Exit.OK


def add_parsers(sub: Any) -> None:
    c = sub.add_parser(
        "challenge", help="serve or print an application's DV challenge", epilog=EXIT_HELP
    )
    csub = c.add_subparsers(dest="challenge_command", metavar="ACTION", required=True)

    s = csub.add_parser("serve", help="serve the http-01 responses until Ctrl-C", epilog=EXIT_HELP)
    s.add_argument("--app", required=True, metavar="APP_ID", help="application id (hex)")
    s.add_argument(
        "--port", type=int, default=8080, help="must be the validators' http_port (default 8080)"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--verbose", action="store_true", help="log each request")
    add_node_args(s)
    s.set_defaults(func=cmd_serve)

    d = csub.add_parser(
        "dns-record", help="print the dns-01 TXT records to publish", epilog=EXIT_HELP
    )
    d.add_argument("--app", required=True, metavar="APP_ID", help="application id (hex)")
    add_node_args(d)
    d.set_defaults(func=cmd_dns_record)
