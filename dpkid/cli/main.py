"""The `dpkid` command line: one grammar for every command (dpkid/cli/common.py).

Every command takes --json (one JSON document on stdout, errors too) and exits
0 success, 1 a negative answer, 2 a usage or local error, 3 a timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpkid import __version__
from dpkid.cli.common import (
    EXIT_HELP,
    Exit,
    ParseError,
    Parser,
    UsageError,
    add_json,
    leaf_parsers,
    print_json,
    report_error,
    run_command,
    wants_json,
)


def cmd_walkthrough(args: argparse.Namespace) -> int:
    from dpkid.dev.walkthrough import run_walkthrough

    steps, summary = run_walkthrough()
    if args.json:
        print_json(
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


def cmd_bench_net(args: argparse.Namespace) -> int:
    from dpkid.dev import benchnet

    def progress(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    try:
        if args.sweep:
            rows = benchnet.run_sweep(
                args.validators, args.duration, progress=progress, mix=args.mix
            )
            if args.plot:
                benchnet.plot_sweep(rows, Path(args.plot))
            if args.json:
                print_json({"sweep": rows})
            else:
                print(benchnet.sweep_table(rows))
            return 0
        if args.rate is None:
            raise UsageError("bench net needs --rate R or --sweep")
        res = benchnet.run_net(
            args.validators,
            args.duration,
            args.rate,
            args.accounts,
            progress=progress,
            mix=args.mix,
        )
    except benchnet.BenchError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(res)
    else:
        for k, v in res.items():
            print(f"  {k:<28} {v}")
    return 0 if not res["errors"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "net":
        return cmd_bench_net(args)
    from dpkid.dev import bench

    results: dict[str, Any] = {}
    if args.what in ("state", "all"):
        results["apply"] = bench.bench_apply(n_txs=args.txs)
        results["proofs"] = bench.bench_proofs(n_records=args.certs)
    if args.what in ("crypto", "all"):
        results["ed25519"] = bench.bench_ed25519()
        results["codec"] = bench.bench_codec()
    if args.what in ("tss", "all"):
        results["tss"] = bench.bench_tss(args.validators, 500)
    if args.what == "proof-scaling":
        results["proof_scaling"] = [bench.bench_proof_scaling(n) for n in args.scale]
    if args.what in ("smt", "all"):
        from dpkid.dev.bench_smt import bench_smt

        results["smt"] = bench_smt(args.certs)
    if args.json:
        print_json(results)
    else:
        for section, figures in results.items():
            print(f"[{section}]")
            rows = figures if isinstance(figures, list) else [figures]
            for row in rows:
                for k, v in row.items():
                    print(f"  {k:<44} {v}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dpkid.dev.soak import MAX_REPEAT

    if not 1 <= args.repeat <= MAX_REPEAT:
        raise UsageError(f"--repeat must be between 1 and {MAX_REPEAT}, not {args.repeat}")
    if not 0 <= args.cpu_burners <= 64:
        raise UsageError(f"--cpu-burners must be between 0 and 64, not {args.cpu_burners}")
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
    written = []
    for name, data in vecs.items():
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        path = out / name
        if args.check:
            try:
                same = path.read_text() == text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                stale.append(name)
        else:
            try:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
            written.append(str(path))
            if not args.json:
                print(f"wrote {path}")
    if args.json:
        doc: dict[str, Any] = {"dir": str(out)}
        if args.check:
            doc.update(match=not stale, differ=stale)
        else:
            doc["wrote"] = written
        print_json(doc)
        return Exit.NO if stale else Exit.OK
    if args.check:
        if stale:
            print(f"vectors in {out} differ from the code: " + ", ".join(stale))
            return Exit.NO
        print("vectors match the code")
    return Exit.OK


def build_parser() -> Parser:
    p = Parser(
        prog="dpkid",
        description="dpkid: a decentralized public key infrastructure on a BFT ledger.",
        epilog=EXIT_HELP + ". Every command takes --json and names its node with --home "
        "(or $DPKID_HOME), --socket or --rpc.",
    )
    p.add_argument("--version", action="version", version=f"dpkid {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    w = sub.add_parser(
        "walkthrough",
        help="run the PKI contracts end to end in one process (DV, EV, proofs, revocation)",
    )
    add_json(w)
    w.set_defaults(func=cmd_walkthrough)

    b = sub.add_parser("bench", help="measure the state machine, proofs and crypto")
    b.add_argument(
        "what",
        choices=["state", "crypto", "smt", "proof-scaling", "tss", "all", "net"],
        nargs="?",
        default="state",
        help="net: a real testnet under load (the options below marked net)",
    )
    b.add_argument("--validators", type=int, default=4, help="net: validators")
    b.add_argument("--duration", type=float, default=60.0, help="net: seconds of load")
    b.add_argument(
        "--rate", type=float, default=None, help="net: offered tx/s (certs: applications/s)"
    )
    b.add_argument(
        "--mix",
        choices=["transfers", "certs"],
        default="transfers",
        help="net: signed transfers, or DV applications checked over http-01 and issued",
    )
    b.add_argument("--sweep", action="store_true", help="net: a grid of rates, fresh net each")
    b.add_argument(
        "--accounts",
        type=int,
        default=0,
        help="net: funded accounts sending (default 400 for transfers, 100 for certs)",
    )
    b.add_argument("--plot", metavar="FILE.png", default=None, help="net --sweep: write a plot")
    b.add_argument(
        "--scale",
        type=int,
        nargs="+",
        default=[10_000, 1_000_000],
        help="certificates in state for proof-scaling",
    )
    b.add_argument("--txs", type=int, default=20_000, help="transactions to apply")
    b.add_argument("--certs", type=int, default=20_000, help="certificates in state for proofs")
    add_json(b)
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("vectors", help="write or check the golden vectors in protocol/vectors")
    v.add_argument("--out", default="protocol/vectors", metavar="DIR")
    v.add_argument("--check", action="store_true", help="only compare, exit 1 if they differ")
    add_json(v)
    v.set_defaults(func=cmd_vectors)

    from dpkid.cli.challenge import add_parsers as add_challenge
    from dpkid.cli.chaos import add_parser as add_chaos
    from dpkid.cli.node import add_parsers as add_node
    from dpkid.cli.sim import add_parser as add_sim

    add_sim(sub)
    add_chaos(sub)
    from dpkid.cli.fuzz import add_parser as add_fuzz

    add_fuzz(sub)
    add_node(sub)
    add_challenge(sub)
    from dpkid.cli.roles import add_parsers as add_roles
    from dpkid.cli.verify import add_parsers as add_verify

    add_roles(sub)
    from dpkid.cli.acme import add_parsers as add_acme

    add_acme(sub)

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
    for _, leaf in leaf_parsers(p):
        # Every command: its name in errors, and the one exit-status scheme in --help.
        leaf.set_defaults(cmd_prog=leaf.prog)
        if not leaf.epilog or leaf.epilog == EXIT_HELP:
            leaf.epilog = textwrap.fill(EXIT_HELP, 78)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(args_list)
    parser = build_parser()
    try:
        args = parser.parse_command(args_list)
    except ParseError as exc:
        return report_error(as_json, exc.prog, Exit.USAGE, f"{exc} (see {exc.prog} --help)")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return Exit.OK
    return run_command(func, args)


if __name__ == "__main__":
    sys.exit(main())
