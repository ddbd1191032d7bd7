"""The ``scratchvision`` command (also ``python -m scratchvision``).

``scratchvision check [op ...] [--backend TIER ...] [--json]``
    verify every operator, and the multi-scale layers (`layers`), on every available tier
    (see :mod:`scratchvision.selfcheck`);
    exits non-zero when anything fails.
``scratchvision bench [op] [--json] [--quick]``
    time the fast tiers against the torch / torchvision references
    (see :mod:`scratchvision.benchmark`).
"""

from __future__ import annotations

import argparse

from ._dispatch import TIERS
from .benchmark import BENCH_SUITES
from .selfcheck import CHECK_SUITES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchvision",
        description="Check and benchmark scratchvision's operators on every tier.")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="verify forward and backward on every tier")
    check.add_argument("ops", nargs="*", metavar="op",
                       help=f"what to check (default: all of {', '.join(CHECK_SUITES)})")
    check.add_argument("--backend", action="append", choices=TIERS, dest="backends",
                       help="tier to check; repeat for several (default: all)")
    check.add_argument("--cases", type=int, default=3,
                       help="random cases per operator and tier (default: 3)")
    check.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    bench = sub.add_parser("bench", help="time the tiers against torch / torchvision")
    bench.add_argument("op", nargs="?", choices=tuple(BENCH_SUITES),
                       help="operator (default: all)")
    bench.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    bench.add_argument("--quick", action="store_true",
                       help="small shapes and few repeats: a smoke test, not a measurement")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        from . import selfcheck

        unknown = sorted(set(args.ops) - set(CHECK_SUITES))
        if unknown:
            raise SystemExit(f"scratchvision check: unknown op {unknown[0]!r}; "
                             f"choose from {', '.join(CHECK_SUITES)}")
        if args.cases < 1:
            raise SystemExit(f"--cases must be positive, got {args.cases}")
        return selfcheck.main(args.ops or list(CHECK_SUITES), args.backends or list(TIERS),
                              args.json, args.cases)
    from . import benchmark

    return benchmark.main(args.op, args.json, args.quick)
