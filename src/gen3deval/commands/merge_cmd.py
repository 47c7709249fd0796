"""``gen3deval merge OUT RUN_DIR...``: union run folders (the shards of ``run --shard I/N``) into a new one.

The stores are unioned into OUT (stage rows, remote-job rows, artifacts; metadata unioned), refusing
folders whose protocol fingerprints or parameters differ and rows of one stage that disagree; then the
reports are written from the merged store, so their numbers equal an unsharded run's. A shard that is
missing or unfinished leaves its pipelines unfinished in the report (``gen3deval run --out OUT`` then runs
them). See :mod:`gen3deval.engine.shards` and docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import sys

HELP = "merge run folders (e.g. the shards of `run --shard I/N`) into one (prints the report path last)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="the merged run folder (new, or an empty folder)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders to merge (same protocol)")


def run(args: argparse.Namespace) -> int:
    from gen3deval.engine.results import write_run_reports
    from gen3deval.engine.shards import merge
    from gen3deval.report.jsonio import read_summary
    from gen3deval.report.terminal import leaderboard_lines

    merge(args.out, args.run_dirs, log=lambda line: print(line, file=sys.stderr))
    report, unfinished = write_run_reports(args.out)
    if unfinished:
        print(
            f"warning: {len(unfinished)} pipelines unfinished (a shard missing or not finished?); "
            f"`gen3deval run --out {args.out}` runs them",
            file=sys.stderr,
        )
    print("\n".join(leaderboard_lines(read_summary(report.parent))))
    print(report)
    return 0
