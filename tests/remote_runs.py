"""A run folder of an image suite with remote systems, written straight into a real store (no engine):
stage rows with real PNG renders and the ``jobs`` table, as the engine writes them (the issue-10 contract)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gen3deval.config import get_protocol
from gen3deval.engine.jobs_table import JobRow, put_job
from gen3deval.engine.store import Store

PROTOCOL = get_protocol({"name": "default", "rig": "trellis8"})
VIEWS = 8


def png(run_dir: Path, rel: str, color: tuple[int, int, int], size: int = 48) -> str:
    """Write an RGBA PNG (a coloured square on transparency) at ``run_dir/rel``; returns ``rel``."""
    path = run_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size, size, 4), np.uint8)
    a[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (*color, 255)
    Image.fromarray(a).save(path)
    return rel


@dataclass
class Job:
    """One generate result of a remote system: its row value and the tries in the jobs table."""

    case: str
    system: str
    ok: bool = True
    remote: dict[str, Any] = field(default_factory=dict)
    mesh_stats: dict[str, Any] | None = None
    error_class: str | None = None
    error: str | None = None
    tries: list[dict[str, Any]] = field(default_factory=list)


def put_stage(store: Store, case: str, system: str, stage: str, ok: bool = True, **kw: Any) -> None:
    now = time.time()
    store.put(
        case=case,
        system=system,
        attempt=1,
        stage=stage,
        status="done" if ok else "failed",
        input_hash="x",
        protocol_hash="p",
        started=now - 1.0,
        finished=now,
        **kw,
    )


def make_run(
    run_dir: Path,
    cases: list[str],
    systems: list[str],
    jobs: list[Job],
    *,
    reference_cases: tuple[str, ...] = (),
) -> None:
    """Write the store: meta, a reference row per case (an input photo, or a reference mesh for
    ``reference_cases``), generate/render rows of ``jobs`` (and score rows for reference cases), job tries."""
    with Store(run_dir) as store:
        store.set_meta("run_id", "remote-test")
        store.set_meta("created", "2025-01-01T00:00:00+00:00")
        store.set_meta("protocol", {"name": PROTOCOL.name, "version": PROTOCOL.version, "hash": "fp"})
        store.set_meta("protocol_obj", PROTOCOL.params())
        store.set_meta("systems", systems)
        store.set_meta("cases", {c: {"id": c, "category": "default", "suite": "images"} for c in cases})
        store.set_meta("suites", [{"name": "images", "description": "photos"}])
        store.set_meta("spec", {"systems": []})
        for i, c in enumerate(cases):
            photo = png(run_dir, f"in/{c}.png", (10 * i, 100, 200))
            if c in reference_cases:
                art: dict[str, Any] = {"image": photo, "mesh": f"art/{c}_ref.glb"}
                put_stage(store, c, "", "reference", artifacts=art, value={"has_reference": True})
            else:
                put_stage(
                    store, c, "", "reference", artifacts={"image": photo}, value={"has_reference": False}
                )
        for j in jobs:
            value: dict[str, Any] = {"kind": "mesh"}
            if j.remote:
                value["remote"] = j.remote
            if j.mesh_stats is not None:
                value["mesh_stats"] = j.mesh_stats
            if not j.ok:
                put_stage(
                    store, j.case, j.system, "generate", ok=False, value=value,
                    error_class=j.error_class, error=j.error,
                )  # fmt: skip
            else:
                art = {"mesh": f"art/{j.case}_{j.system}.glb"}
                put_stage(store, j.case, j.system, "generate", artifacts=art, value=value)
                asset = [
                    png(run_dir, f"r/{j.case}/{j.system}/a{k}.png", (200, 20 * k, 0)) for k in range(VIEWS)
                ]
                grey = [
                    png(run_dir, f"r/{j.case}/{j.system}/g{k}.png", (128, 128, 128)) for k in range(VIEWS)
                ]
                put_stage(
                    store, j.case, j.system, "render",
                    artifacts={"renders": asset, "renders_grey": grey}, value={"views": VIEWS},
                )  # fmt: skip
                if j.case in reference_cases:
                    put_stage(store, j.case, j.system, "score", value={"chamfer_l1": 0.01, "volume_iou": 0.5})
            for n, t in enumerate(j.tries, start=1):
                put_job(
                    store,
                    JobRow(case=j.case, system=j.system, attempt=1, try_=n, input_hash="h", **t),
                )
