"""The `dpkid` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpkid import __version__


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_walkthrough(args: argparse.Namespace) -> int:
    from dpkid.dev.walkthrough import run_walkthrough

    steps, summary = run_walkthrough()
    if args.json:
        _print_json(
            {
                **summary,
                "steps": [
                    {"name": s.name, "ok": s.ok, "height": s.height, "detail": s.detail, **s.data}
                    for s in steps
                ],
            }
        )
    else:
        print(f"dpkid state-machine walk-through on chain {summary['chain_id']}\n")
        print(f"{'step':<28} {'height':>6}  {'result':<6} detail")
        print("-" * 100)
        for s in steps:
            print(f"{s.name:<28} {s.height:>6}  {'ok' if s.ok else 'FAIL':<6} {s.detail}")
        print("-" * 100)
        print(f"height {summary['height']}  app hash {summary['app_hash']}")
        print(f"certificate log: {summary['log_size']} entries, root {summary['log_root']}")
        print("balances: " + ", ".join(f"{k} {v}" for k, v in summary["balances"].items()))
        print("\nok" if summary["ok"] else "\nFAILED")
    return 0 if summary["ok"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from dpkid.dev import bench

    results: dict[str, Any] = {}
    if args.what in ("state", "all"):
        results["apply"] = bench.bench_apply(n_txs=args.txs)
        results["proofs"] = bench.bench_proofs(n_records=args.certs)
    if args.what in ("crypto", "all"):
        results["ed25519"] = bench.bench_ed25519()
        results["codec"] = bench.bench_codec()
    if args.what == "proof-scaling":
        results["proof_scaling"] = [bench.bench_proof_scaling(n) for n in args.scale]
    if args.what in ("smt", "all"):
        from dpkid.dev.bench_smt import bench_smt

        results["smt"] = bench_smt(args.certs)
    if args.json:
        _print_json(results)
    else:
        for section, figures in results.items():
            print(f"[{section}]")
            rows = figures if isinstance(figures, list) else [figures]
            for row in rows:
                for k, v in row.items():
                    print(f"  {k:<44} {v}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.repeat > 1 or args.cpu_burners:
        from dpkid.dev.soak import run_repeat

        return run_repeat(args.repeat, args.cpu_burners, args.json)
    from dpkid.dev.demo import run_demo

    return run_demo(keep=args.keep, as_json=args.json, workdir=args.dir)


def cmd_vectors(args: argparse.Namespace) -> int:
    from dpkid.dev.vectors import build_vectors

    out = Path(args.out)
    vecs = build_vectors()
    stale = []
    for name, data in vecs.items():
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        path = out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if args.check:
        if stale:
            print("vectors differ from the code: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("vectors match the code")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpkid",
        description="dpkid: a decentralized public key infrastructure on a BFT ledger.",
    )
    p.add_argument("--version", action="version", version=f"dpkid {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    w = sub.add_parser(
        "walkthrough",
        help="run the PKI contracts end to end in one process (DV, EV, proofs, revocation)",
    )
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.set_defaults(func=cmd_walkthrough)

    b = sub.add_parser("bench", help="measure the state machine, proofs and crypto")
    b.add_argument(
        "what",
        choices=["state", "crypto", "smt", "proof-scaling", "all"],
        nargs="?",
        default="state",
    )
    b.add_argument(
        "--scale",
        type=int,
        nargs="+",
        default=[10_000, 1_000_000],
        help="certificates in state for proof-scaling",
    )
    b.add_argument("--txs", type=int, default=20_000, help="transactions to apply")
    b.add_argument("--certs", type=int, default=20_000, help="certificates in state for proofs")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("vectors", help="write or check the golden vectors in protocol/vectors")
    v.add_argument("--out", default="protocol/vectors")
    v.add_argument("--check", action="store_true", help="only compare, exit 1 if they differ")
    v.set_defaults(func=cmd_vectors)

    from dpkid.cli.challenge import add_parsers as add_challenge
    from dpkid.cli.node import add_parsers as add_node
    from dpkid.cli.sim import add_parser as add_sim

    add_sim(sub)
    add_node(sub)
    add_challenge(sub)
    __import__("dpkid.cli.roles", fromlist=["_"]).add_parsers(sub)
    from dpkid.cli.verify import add_parsers as add_verify

    add_verify(sub)
    from dpkid.cli.watch import add_parsers as add_watch

    add_watch(sub)

    d = sub.add_parser(
        "demo",
        help="run a 4-validator network and issue, verify, revoke and degrade certificates",
    )
    d.add_argument("--keep", action="store_true", help="leave the network running afterwards")
    d.add_argument("--json", action="store_true", help="print one JSON object with every step")
    d.add_argument("--dir", default=None, help="work directory (default: a new temporary one)")
    d.add_argument(
        "--repeat", type=int, default=1, help="run the demo N times, each as a fresh process"
    )
    d.add_argument(
        "--cpu-burners",
        type=int,
        default=0,
        help="load the machine with K bounded busy loops while repeating",
    )
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
