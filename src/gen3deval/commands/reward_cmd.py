"""``gen3deval reward FILE.jsonl``: the CAD reward (:mod:`gen3deval.reward`) of a file of completions.

Each input line is a JSON object with a completion (``--completion-column``: a string or a list of chat
messages) and its reference (``--reference-column``: a CadQuery program or a mesh path). One output line per
input line, in order: ``{"line", "id", "reward", "error_class", "metric", "seconds", "message"}`` (``id``: the
line's ``id`` or ``question_id``). A bad line (not JSON, a column missing, a reference that fails) gets
``error_class`` ``bad_line`` / ``reference_error``, ``reward`` null and a message naming FILE:LINE; the
other lines go on. A summary (mean reward, VSR, programs/s) goes to stderr.

Exit status: 0 when every line was scored, 1 when some line was bad, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from gen3deval.errors import UserInputError

HELP = "score a JSONL file of CadQuery completions with the CAD reward (IoU or another metric, penalties)"
BAD_LINE = "bad_line"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="JSONL: one object a line with a completion and its reference")
    p.add_argument("--metric", default="best_iou", help="metric key (default best_iou, the gencad protocol)")
    p.add_argument("--reference-column", default="ground_truth", help="column of the references")
    p.add_argument("--completion-column", default="completion", help="column of the completions")
    p.add_argument("--out", metavar="OUT.jsonl", help="write the reward lines here (default: stdout)")
    p.add_argument("--workers", type=int, default=2, help="programs run at a time (default 2)")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds per program (default 10)"
    )
    p.add_argument("--protocol", default="gencad", help="protocol preset of the metric (default gencad)")
    p.add_argument(
        "--penalty",
        action="append",
        default=[],
        metavar="CLASS=VALUE",
        help="reward of an error class (repeatable; default 0.0 for every class)",
    )
    p.add_argument("--batch", type=int, default=256, help="lines scored per batch (default 256)")


def _penalties(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        cls, sep, value = item.partition("=")
        try:
            out[cls.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserInputError(f"--penalty {item!r}: expected CLASS=VALUE, e.g. syntax=-1")
    return out


def _parse(raw: str, where: str, ccol: str, rcol: str) -> tuple[dict[str, Any] | None, str]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, f"{where}: not JSON ({exc.msg}, column {exc.colno})"
    if not isinstance(obj, dict):
        return None, f"{where}: expected a JSON object, got {type(obj).__name__}"
    for col in (ccol, rcol):
        if col not in obj:
            return None, f"{where}: no {col!r} column (columns: {', '.join(sorted(obj)) or 'none'})"
    return obj, ""


def run(args: argparse.Namespace) -> int:
    from gen3deval.reward import cad_reward

    path = Path(args.file)
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    if args.batch < 1:
        raise UserInputError(f"--batch must be >= 1, got {args.batch}")
    reward = cad_reward(
        metric=args.metric,
        penalties=_penalties(args.penalty),
        reference=args.reference_column,
        workers=args.workers,
        timeout_s=args.timeout,
        protocol=args.protocol,
    )
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    stats = {"lines": 0, "bad": 0, "programs": 0, "valid": 0, "sum": 0.0}
    t0 = time.monotonic()
    try:
        batch: list[tuple[int, str]] = []
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, raw in enumerate(f, 1):
                if raw.strip():
                    batch.append((n, raw))
                if len(batch) >= args.batch:
                    _score_batch(reward, batch, path, args, out, stats)
                    batch = []
        if batch:
            _score_batch(reward, batch, path, args, out, stats)
    finally:
        reward.close()
        if out is not sys.stdout:
            out.close()
    secs = time.monotonic() - t0
    scored = stats["programs"]
    mean = stats["sum"] / scored if scored else float("nan")
    vsr = stats["valid"] / scored if scored else float("nan")
    print(
        f"reward: {stats['lines']} lines, {scored} scored, {stats['bad']} bad; mean {args.metric} reward "
        f"{mean:.4f}, VSR {vsr:.3f}, {scored / secs if secs > 0 else 0:.2f} programs/s ({secs:.1f} s)",
        file=sys.stderr,
    )
    return 1 if stats["bad"] else 0


def _score_batch(
    reward: Any,
    batch: list[tuple[int, str]],
    path: Path,
    args: argparse.Namespace,
    out: Any,
    stats: dict[str, Any],
) -> None:
    rows: list[dict[str, Any]] = []
    good: list[tuple[int, dict[str, Any]]] = []
    for n, raw in batch:
        obj, err = _parse(raw, f"{path}:{n}", args.completion_column, args.reference_column)
        row: dict[str, Any] = {"line": n, "id": None}
        if obj is None:
            row.update(reward=None, error_class=BAD_LINE, metric=None, seconds=0.0, message=err)
        else:
            row["id"] = obj.get("id", obj.get("question_id"))
            good.append((len(rows), obj))
        rows.append(row)
    if good:
        details = reward._score(
            [o[args.completion_column] for _, o in good],
            [o[args.reference_column] for _, o in good],
            column=args.reference_column,
            raise_reference=False,
        )
        for (k, _), d in zip(good, details, strict=True):
            rec = d.to_dict()
            if rec["error_class"] == "reference_error":
                rec["reward"] = None
                rec["message"] = f"{path}:{rows[k]['line']}: {rec['message'].split(': ', 1)[-1]}"
            rows[k].update(rec)
    for row in rows:
        stats["lines"] += 1
        if row["reward"] is None or (isinstance(row["reward"], float) and math.isnan(row["reward"])):
            stats["bad"] += 1
            print(row["message"], file=sys.stderr)
        else:
            stats["programs"] += 1
            stats["sum"] += float(row["reward"])
            stats["valid"] += row["error_class"] is None
        out.write(json.dumps(row) + "\n")
    out.flush()
