"""``gen3deval compare CANDIDATE REFERENCE``: every geometry metric of two meshes (PROTOCOLS.md section 5)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from gen3deval.errors import UserInputError

HELP = "compare two meshes with every geometry metric (Chamfer, F-score, normal consistency, IoU)"

DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("candidate", help="candidate mesh (.glb/.gltf/.obj/.ply/.stl/.off)")
    p.add_argument("reference", help="reference mesh")
    p.add_argument("--normalize", default="bbox", choices=["bbox", "sphere", "inertia", "none"])
    p.add_argument(
        "--align", default="none", help="none | pca | rot24, optionally with +icp (e.g. rot24+icp)"
    )
    p.add_argument("--samples", type=int, default=100_000, help="surface points per mesh (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="KEY",
        help="metric keys (default: every geometry metric of PROTOCOLS.md section 5, best_iou included)",
    )
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=list(DEFAULT_THRESHOLDS),
        help="F-score thresholds T (default 0.01 0.02 0.05)",
    )
    p.add_argument("--iou-resolution", type=int, default=128, help="grid resolution for non-watertight IoU")
    p.add_argument("--up", default="y", choices=["y", "z"], help="up axis of OBJ/PLY/STL/OFF inputs")
    p.add_argument(
        "--max-faces", type=int, default=5_000_000, help="refuse meshes with more faces (default 5M)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def protocol_for(args: argparse.Namespace, metrics: list[str]) -> dict[str, Any]:
    from gen3deval.protocol import fingerprint

    params = {
        "normalize": args.normalize,
        "align": args.align,
        "samples": args.samples,
        "seed": args.seed,
        "thresholds": list(args.thresholds),
        "iou_resolution": args.iou_resolution,
        "up": args.up,
        "metrics": metrics,
    }
    # version 2: independent candidate/reference sampling streams, undefined IoU (PROTOCOLS.md 4-5)
    return fingerprint(params, name="compare", version="2")


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def run(args: argparse.Namespace) -> int:
    from gen3deval.compare import compare, default_metric_keys
    from gen3deval.mesh.io import load_mesh

    if args.samples < 1:
        raise UserInputError(f"--samples must be >= 1, got {args.samples}")
    if any(not t > 0 for t in args.thresholds):
        raise UserInputError("--thresholds must be positive")
    cand = load_mesh(args.candidate, up=args.up, max_faces=args.max_faces)
    ref = load_mesh(args.reference, up=args.up, max_faces=args.max_faces)
    keys = list(args.metrics) if args.metrics else [*default_metric_keys(args.thresholds), "best_iou"]
    scores = compare(
        cand,
        ref,
        normalize=args.normalize,
        align=args.align,
        samples=args.samples,
        seed=args.seed,
        metrics=keys,
        thresholds=tuple(args.thresholds),
        iou_resolution=args.iou_resolution,
    )
    protocol = protocol_for(args, keys)
    # Alignments are properties of this score, not of the protocol: kept beside the fingerprint, unhashed,
    # so that the top-level keys stay exactly the metric keys of PROTOCOLS.md.
    protocol["alignment"] = scores.pop("alignment", None)
    if "best_iou_alignment" in scores:
        alignment = scores.pop("best_iou_alignment")  # None when best_iou is undefined
        if alignment is not None:
            alignment["iou_method"] = scores.pop("best_iou_method", None)
        protocol["best_iou_alignment"] = alignment
    if args.json:
        out = {k: _json_value(v) for k, v in scores.items()}
        out["protocol"] = protocol
        print(json.dumps(out, indent=2))
        return 0
    _print_table(args, scores, protocol)
    return 0


def _print_table(args: argparse.Namespace, scores: dict[str, Any], protocol: dict[str, Any]) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from gen3deval.metrics.base import metric_info

    table = Table(title=f"{Path(args.candidate).name} vs {Path(args.reference).name}", title_justify="left")
    table.add_column("metric")
    table.add_column("key", style="dim")
    table.add_column("value", justify="right")
    table.add_column("better", justify="center")
    for key, value in scores.items():
        scale = 1.0
        try:
            info = metric_info(key)
            display, better, scale = info.display, ("↑" if info.higher_is_better else "↓"), info.scale
        except UserInputError:  # not a metric (e.g. volume_iou_method)
            display, better = key, ""
        if value is None and f"{key}_reason" in scores:
            shown = "undefined"  # the reason follows on its own row
        else:
            shown = f"{value * scale:.6g}" if isinstance(value, float) else str(value)
        table.add_row(display, key, shown, better)
    console = Console()
    console.print(table)
    console.print(
        f"protocol: normalize={args.normalize} align={args.align} samples={args.samples} seed={args.seed} "
        f"(fingerprint {protocol['hash']})"
    )
