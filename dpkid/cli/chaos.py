"""`dpkid chaos run`: fault manifests on real node processes (issue 13)."""

from __future__ import annotations

import argparse
from typing import Any

from dpkid.cli.common import UsageError, add_json


def cmd_chaos_run(args: argparse.Namespace) -> int:
    from dpkid.dev.chaos import ChaosError, main_run

    try:
        return main_run(args.manifest, args.seed, args.json, args.dir)
    except ChaosError as exc:
        raise UsageError(str(exc)) from None


def add_parser(sub: Any) -> None:
    c = sub.add_parser("chaos", help="fault manifests on a local network of real processes")
    csub = c.add_subparsers(dest="chaos_command", metavar="CHAOS_COMMAND", required=True)
    r = csub.add_parser(
        "run",
        help="start a network under signed load, apply a manifest's perturbations, check it",
    )
    r.add_argument("manifest", metavar="MANIFEST.toml")
    r.add_argument("--seed", type=int, default=None, help="default: random, printed")
    r.add_argument("--dir", default=None, help="work directory, kept (default: a temporary one)")
    add_json(r)
    r.set_defaults(func=cmd_chaos_run)
