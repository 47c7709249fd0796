"""``gen3deval report RUN_DIR [--out DIR]``: rebuild the reports (results.jsonl, CSV tables, report.html) from the store.

The store is only read, so this works on a read-only run folder; the report files then go to ``--out DIR``
(their image links point back into RUN_DIR's artifacts by absolute path).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Any

from gen3deval.errors import UserInputError

HELP = "rebuild a run's reports from its store (prints the report path last)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `gen3deval run`")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write the report files here instead of RUN_DIR (e.g. when RUN_DIR is read-only)",
    )


def _absolute_artifacts(rows: list[dict[str, Any]], run_dir: Path) -> None:
    """Point artifact paths (relative to the run folder) at RUN_DIR so a report written elsewhere finds them."""
    base = run_dir.resolve()

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and not Path(v).is_absolute():
            return str(base / v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    for row in rows:
        arts = row.get("artifacts")
        if isinstance(arts, dict):
            row["artifacts"] = {k: fix(v) for k, v in arts.items()}


def run(args: argparse.Namespace) -> int:
    from gen3deval.engine.results import build_meta, build_rows
    from gen3deval.engine.store import Store, require_run_dir
    from gen3deval.report import write_reports

    run_dir = require_run_dir(args.run_dir)
    out = Path(args.out) if args.out else run_dir
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: not a folder")
    with Store(run_dir, readonly=True) as store:
        rows, unfinished = build_rows(store)
        meta = build_meta(store)
    meta["unfinished"] = len(unfinished)
    if out.resolve() != run_dir.resolve():
        rows = [dict(r) for r in rows]
        _absolute_artifacts(rows, run_dir)
    try:
        report = write_reports(out, rows, meta)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = (
                f"; write them elsewhere with `gen3deval report {run_dir} --out DIR`" if not args.out else ""
            )
            raise UserInputError(
                f"{out}: cannot write the report files there ({exc.strerror}){hint}"
            ) from exc
        if exc.errno == errno.ENOSPC:
            raise UserInputError(f"{out}: the disk is full; free some space or use --out DIR") from exc
        raise
    if unfinished:
        print(
            f"warning: {len(unfinished)} pipelines are unfinished and not in the report; "
            f"`gen3deval run --out {run_dir}` finishes them",
            file=sys.stderr,
        )
    print(report)
    return 0
