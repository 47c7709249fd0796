"""Where the shared real data lives (import as `from testdata import ...`; tests/ is on pythonpath)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEN3DEVAL_SHARED_DATA", REPO.parent / "shared" / "data"))
LOWPOLY = SHARED_DATA / "lowpoly304"
GENCAD = SHARED_DATA / "gencad100" / "cases.jsonl"


def lowpoly_manifest() -> list[dict]:
    """Rows of the shared lowpoly304 manifest (skip the test when the shared data is absent)."""
    path = LOWPOLY / "manifest.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lowpoly_sample(per_category: int = 1) -> list[dict]:
    """A fixed sample: the first ``per_category`` objects of each category, in manifest order."""
    seen: dict[str, int] = {}
    out = []
    for row in lowpoly_manifest():
        if seen.get(row["category"], 0) < per_category:
            seen[row["category"]] = seen.get(row["category"], 0) + 1
            out.append(row)
    return out


def toys4k_sha(i: int) -> str:
    """The sha256 (case id) of asset ``i`` of :func:`toys4k_tree`."""
    import hashlib

    return hashlib.sha256(f"asset{i}".encode()).hexdigest()


def toys4k_tree(root: Path, n: int = 3, bad_rows: bool = True, captions: dict | None = None) -> Path:
    """A Toys4k-layout folder (``metadata.csv`` + ``toys4k_obj_files/<cat>/<name>/mesh.obj``) of the first ``n``
    objects of :func:`lowpoly_sample` written as OBJ; ``captions``: {i: [captions]} (default two per asset).
    ``bad_rows``: a row whose mesh is missing (asset 7) and one with a malformed captions cell (asset 8)."""
    import csv

    import trimesh

    from gen3deval.mesh.io import load_mesh

    picks = lowpoly_sample(1)[:n]
    rows = []
    for i, p in enumerate(picks):
        cat, name = p["category"], f"{p['category']}_{i:03d}"
        mesh = load_mesh(LOWPOLY / p["path"])
        out = root / "toys4k_obj_files" / cat / name / "mesh.obj"
        out.parent.mkdir(parents=True)
        trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(out)
        caps = (captions or {}).get(i, [f"a {cat}", f"a {cat} in low poly style"])
        rows.append([toys4k_sha(i), f"{cat}/{name}/{name}.blend", 5.0 + i, repr(caps)])
    if bad_rows:
        rows.append([toys4k_sha(7), "tool/tool_404/tool_404.blend", 4.5, "['a missing hammer']"])
        rows.append([toys4k_sha(8), f"{picks[0]['category']}/x/x.blend", 4.5, "['unclosed"])
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sha256", "file_identifier", "aesthetic_score", "captions"])
        w.writerows(rows)
    return root


def worker_probe(items: object, *args: object) -> tuple[int, str | None]:
    """(pid, CUDA_VISIBLE_DEVICES) of the process running it: a stage function stand-in for executor tests
    (importable by spawned workers: tests/ is on their path)."""
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def offline_hf(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Hugging Face offline, with its cache under ``home`` (nothing else found)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


def hf_cache_entry(home: Path, repo_id: str, folder: Path, rev: str) -> Path:
    """``folder`` stored under ``home/hub`` as huggingface_hub stores ``repo_id`` (blobs named by sha256,
    snapshot symlinks, ``refs/main``); returns the snapshot folder."""
    import hashlib
    import shutil

    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in sorted(folder.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return snap
