"""`dpkid fuzz`: the same run as ``python -m dpkid.dev.fuzz`` (issue 13)."""

from __future__ import annotations

import argparse
from typing import Any

from dpkid.cli.common import UsageError


def cmd_fuzz(args: argparse.Namespace) -> int:
    from dpkid.dev.fuzz import FuzzUsageError, run

    try:
        return run(args)
    except FuzzUsageError as exc:
        raise UsageError(str(exc)) from None


def add_parser(sub: Any) -> None:
    from dpkid.dev.fuzz import add_arguments

    p = sub.add_parser("fuzz", help="feed every decoder and interface N generated bad inputs")
    add_arguments(p)
    p.set_defaults(func=cmd_fuzz)
