"""``gen3deval score --suite KIND:PATH [--outputs DIR] --metrics clip_score``: score assets you already have.

No generation: the candidates are the mesh files in ``--outputs`` (``DIR/{case id}.glb|.obj|.ply|...``; for a
``toys4k:`` suite the id is the asset's sha256), or without ``--outputs`` the suite's own meshes (the
ground-truth ceiling). It is a run (protocol ``clip3d`` with the chosen metrics, background and CLIP model), so
it resumes after a crash and reruns only what changed. Besides the run's reports it writes the files of the
public Toys4k CLIP-score script (``clip_scores.csv``, ``clip_summary.json``,
:mod:`gen3deval.report.clip_score_files`). The last line printed is the HTML report's path.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
from pathlib import Path
from typing import Any

HELP = "score existing assets (CLIP score on Toys4k-style suites, ...) without generating: resumable"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, metavar="KIND:PATH", help="e.g. toys4k:PATH, meshes:DIR")
    p.add_argument(
        "--outputs",
        metavar="DIR",
        help="the assets to score, named by case id (DIR/{id}.glb|.obj|.ply...); default: the suite's meshes",
    )
    p.add_argument(
        "--metrics",
        default="clip_score",
        metavar="KEY[,KEY...]",
        help="metrics (default clip_score): clip_score, clip_score_clamped, clip_image_to_3d, and with "
        "reference meshes clip_image_sim, lpips, ssim, chamfer_l2, fscore, ...",
    )
    p.add_argument(
        "--clip-model", metavar="ID_OR_DIR", help="CLIP model: a Hugging Face id (local cache) or a folder"
    )
    p.add_argument(
        "--background",
        choices=("white", "black"),
        default="white",
        help="what renders are composited over before every metric: white (the protocol) or black (compat: "
        "reproduces scripts that convert RGBA renders to RGB)",
    )
    p.add_argument(
        "--caption",
        choices=("longest", "first"),
        help="which of a Toys4k asset's captions to score against (default: longest)",
    )
    p.add_argument(
        "--up", choices=("y", "z"), help="up axis of OBJ/PLY/STL files (suite and outputs; default y)"
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (created; an existing one is resumed)")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: the CPU cores)")
    p.add_argument("--limit", type=int, metavar="N", help="a stratified sample of N cases (seeded by --seed)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the --limit sample (default 0)")
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of live progress bars")


def _protocol(args: argparse.Namespace) -> dict[str, Any]:
    """The ``clip3d`` preset with the requested metrics sorted into their fields (ConfigError when unknown)."""
    from gen3deval.config import ALL_IMAGE_METRICS, GEOMETRY_METRICS, REFERENCE_FREE_METRICS
    from gen3deval.errors import ConfigError

    keys = [k.strip() for k in str(args.metrics).split(",") if k.strip()]
    if not keys:
        raise ConfigError("--metrics: give at least one metric, e.g. --metrics clip_score")
    metrics, image = [], []
    for k in keys:
        if k in REFERENCE_FREE_METRICS or k in GEOMETRY_METRICS:
            metrics.append(k)
        elif k in ALL_IMAGE_METRICS:
            image.append(k)
        else:
            known = [*REFERENCE_FREE_METRICS, *ALL_IMAGE_METRICS, *GEOMETRY_METRICS]
            raise ConfigError(f"--metrics: unknown metric {k!r}; known: {', '.join(known)}")
    proto: dict[str, Any] = {
        "name": "clip3d",
        "metrics": metrics,
        "image_metrics": image,
        "background": args.background,
    }
    if args.clip_model:
        clip = Path(args.clip_model).expanduser()
        proto["clip_model"] = str(clip.resolve()) if clip.exists() else args.clip_model
    return proto


def _default_out(args: argparse.Namespace, protocol: dict[str, Any]) -> Path:
    from gen3deval.commands.run_cmd import default_suite_folder
    from gen3deval.config import stable_hash

    outputs = str(Path(args.outputs).expanduser().resolve()) if args.outputs else "-"
    digest = hashlib.sha256(stable_hash([outputs, protocol, args.caption, args.up]).encode()).hexdigest()[:6]
    return Path("runs") / f"score-{default_suite_folder([args.suite])}-{digest}"


def resolve(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """(RunSpec, metric keys in the order asked) of the command line."""
    from gen3deval.config import build_spec
    from gen3deval.errors import ConfigError

    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs: expected a positive integer, got {args.jobs}")
    protocol = _protocol(args)
    suite: dict[str, Any] = {"spec": args.suite}
    if args.caption:
        if not args.suite.startswith("toys4k:"):
            raise ConfigError("--caption applies to toys4k: suites (their assets have several captions)")
        suite["caption"] = args.caption
    if args.up:
        suite["up"] = args.up
    if args.outputs:
        outputs = Path(args.outputs).expanduser()
        if not outputs.is_dir():
            raise ConfigError(f"--outputs: {outputs} is not a folder")
        settings = {"dir": str(outputs.resolve()), **({"up": args.up} if args.up else {})}
        system: dict[str, Any] = {
            "name": "files",
            "label": outputs.resolve().name or "outputs",
            "settings": settings,
        }
    else:
        system = {"name": "oracle", "label": "suite_meshes"}
    data = {"suites": [suite], "systems": [system], "protocol": protocol}
    spec = build_spec(
        data,
        out=args.out,
        jobs=args.jobs,
        limit=args.limit,
        seed=args.seed,
        default_out=_default_out(args, protocol),
    )
    return spec, [*protocol["metrics"], *protocol["image_metrics"]]


def run(args: argparse.Namespace) -> int:
    from gen3deval.commands.run_cmd import execute
    from gen3deval.engine.learned import resolve_models
    from gen3deval.errors import DependencyError
    from gen3deval.report.clip_score_files import write_clip_score_files

    spec, keys = resolve(args)
    _, skipped = resolve_models(spec.protocol)
    if skipped and set(skipped) >= set(keys):
        # Nothing could be scored: say how to get the model instead of rendering every asset for nothing.
        raise DependencyError("; ".join(dict.fromkeys(skipped.values())))
    args.resume_out = spec.out
    words = sys.argv[1:] if sys.argv[1:2] == ["score"] else ["score"]
    if "--out" not in words:
        words += ["--out", str(spec.out)]
    args.resume_command = "gen3deval " + shlex.join(words)
    report, engine, rows = execute(spec, quiet=args.quiet)
    cases = [(e.key, e.case) for e in engine.cases]
    fp = engine.fingerprint
    extra = {
        "metric": keys[0],
        "metrics": keys,
        "background": spec.protocol.background,
        "caption_choice": args.caption or ("longest" if args.suite.startswith("toys4k:") else None),
        "clip_model": (fp.get("models") or {}).get("clip"),
        "skipped_metrics": engine.skipped_metrics,
        "protocol": {"name": fp.get("name"), "version": fp.get("version"), "hash": fp.get("hash")},
        "fingerprint": fp,
        "run_dir": str(Path(spec.out).resolve()),
        "report": str(report),
    }
    csv_path, json_path = write_clip_score_files(spec.out, cases, rows, keys, extra)
    print(f"per-asset scores: {csv_path}", file=sys.stderr)
    print(f"summary: {json_path}", file=sys.stderr)
    print(report)
    return 0
