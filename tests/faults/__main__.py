"""`python -m tests.faults`: the fault suite's long form (`make faults`), printing the table.

Size: `--size short|long` (or FAULTS_SIZE), `--changes N` (or FAULTS_CHANGES) to override
the changes per fault. FAULTS_TRACE=<dir> writes every call and every log of each run
there, to debug a count. Exits 1 if any count that must be 0 is not.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys

from ..infra import postgres_url
from .checker import ZERO, Result, details, table
from .harness import run_backend
from .injector import FAULTS
from .workload import Size


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--size", default=os.environ.get("FAULTS_SIZE", "long"))
    parser.add_argument("--changes", type=int, default=int(os.environ.get("FAULTS_CHANGES", 0)))
    parser.add_argument(
        "--backend", choices=["sqlite", "postgres", "all"], default="all", help="default: all"
    )
    parser.add_argument("--fault", action="append", choices=FAULTS, help="default: every fault")
    parser.add_argument(
        "--strict-retries",
        action="store_true",
        help="count ambiguous changes (applied, answered 503/nothing, retry got 409) as failures",
    )
    return parser.parse_args()


async def main(args: argparse.Namespace) -> list[Result]:
    size = Size.named(args.size)
    if args.changes:
        size = dataclasses.replace(size, changes=args.changes)
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    faults = args.fault or list(FAULTS)
    results: list[Result] = []

    def report(result: Result) -> None:
        print(
            f"  {result.fault} on {result.backend}: {result.counts['changes']} changes, "
            f"{result.seconds:.0f} s ({result.did})",
            flush=True,
        )

    with postgres_url() as pg:
        for backend in backends:
            if backend == "postgres" and pg is None:
                print("no PostgreSQL available: skipping the postgres backend", flush=True)
                continue
            print(f"fault suite on {backend}, {size.changes} changes per fault", flush=True)
            results += await run_backend(
                backend, size, postgres_url=pg, faults=faults, report=report
            )
    return results


def run() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse()
    results = asyncio.run(main(args))
    print()
    print(table(results, f"fault suite ({args.size} form)"))
    print()
    print(details(results))
    zero = (*ZERO, "ambiguous") if args.strict_retries else ZERO
    failed = [r for r in results if r.failures(zero)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run())
