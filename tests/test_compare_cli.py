"""`gen3deval compare`: JSON keys, real shared objects, and bad input (exit 2, one line naming the file)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from gen3deval.cli import main
from testdata import LOWPOLY, lowpoly_sample

PROTOCOL_KEYS = {
    "chamfer_l1",
    "chamfer_l2",
    "chamfer_l2_sum",
    "hausdorff",
    "fscore@0.01",
    "fscore@0.02",
    "fscore@0.05",
    "normal_consistency",
    "volume_iou",
    "volume_iou_method",
    "best_iou",
}


def test_json_keys_are_exactly_the_protocol_keys(capsys):
    rows = lowpoly_sample(1)
    a, b = LOWPOLY / rows[0]["path"], LOWPOLY / rows[3]["path"]
    assert main(["compare", str(a), str(b), "--json", "--samples", "20000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == PROTOCOL_KEYS | {"protocol"}
    assert out["protocol"]["params"]["samples"] == 20000 and len(out["protocol"]["hash"]) == 16
    for key in PROTOCOL_KEYS - {"volume_iou_method"}:
        assert isinstance(out[key], float), key
    assert 0 < out["chamfer_l1"] < 1 and 0 <= out["fscore@0.01"] <= out["fscore@0.05"] <= 1


def test_identical_object_scores_perfect(capsys):
    path = LOWPOLY / lowpoly_sample(1)[5]["path"]
    assert main(["compare", str(path), str(path), "--json", "--samples", "20000"]) == 0
    out = json.loads(capsys.readouterr().out)
    # independent samples of one surface: Chamfer is the sampling noise (PROTOCOLS.md section 4), not 0
    assert 0 < out["chamfer_l1"] < 0.01 and 0 < out["hausdorff"] < 0.1
    assert out["fscore@0.05"] == 1 and out["normal_consistency"] > 0.95
    assert out["volume_iou"] == 1


def test_spheres_through_the_cli(tmp_path, capsys):
    small, big = tmp_path / "small.ply", tmp_path / "big.ply"
    trimesh.creation.icosphere(subdivisions=5, radius=0.5).export(small)
    trimesh.creation.icosphere(subdivisions=5, radius=0.53).export(big)
    args = ["compare", str(small), str(big), "--normalize", "none", "--json", "--metrics"]
    assert main([*args, "chamfer_l1", "fscore@0.02", "fscore@0.05", "normal_consistency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chamfer_l1"] == pytest.approx(0.03, abs=1e-3)
    assert out["fscore@0.02"] == 0 and out["fscore@0.05"] == 1
    assert out["normal_consistency"] == pytest.approx(1, abs=1e-3)


def _bad_files(tmp_path):
    good = tmp_path / "good.ply"
    trimesh.creation.box().export(good)
    corrupt = tmp_path / "corrupt.glb"
    corrupt.write_bytes(b"glTF\x02\x00\x00\x00not really a glb")
    unknown = tmp_path / "mesh.xyz"
    unknown.write_text("0 0 0\n")
    points = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((5, 3))).export(points)
    nan = tmp_path / "nan.obj"
    nan.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    flat = tmp_path / "flat.obj"
    flat.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    return good, {
        "missing": (tmp_path / "missing.glb", "not found"),
        "unknown": (unknown, "unknown mesh format"),
        "corrupt": (corrupt, "corrupt"),
        "no_triangles": (points, "no triangles"),
        "nan": (nan, "NaN"),
        "degenerate": (flat, "degenerate"),
    }


@pytest.mark.parametrize("case", ["missing", "unknown", "corrupt", "no_triangles", "nan", "degenerate"])
def test_bad_input_exit_2_naming_the_file(tmp_path, capsys, case):
    good, bad = _bad_files(tmp_path)
    path, fragment = bad[case]
    assert main(["compare", str(path), str(good)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and fragment in err, err
    assert "Traceback" not in err


def test_too_many_faces(tmp_path, capsys):
    good, _ = _bad_files(tmp_path)
    assert main(["compare", str(good), str(good), "--max-faces", "5"]) == 2
    err = capsys.readouterr().err
    assert str(good) in err and "more than the limit of 5" in err


def test_real_subprocess_no_traceback(tmp_path):
    _, bad = _bad_files(tmp_path)
    path = bad["corrupt"][0]
    proc = subprocess.run(
        [sys.executable, "-m", "gen3deval", "compare", str(path), str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr


def test_unknown_metric_and_alignment_are_user_errors(tmp_path, capsys):
    good, _ = _bad_files(tmp_path)
    assert main(["compare", str(good), str(good), "--metrics", "chamfer_l3"]) == 2
    assert "chamfer_l3" in capsys.readouterr().err
    assert main(["compare", str(good), str(good), "--align", "mirror"]) == 2
    assert "mirror" in capsys.readouterr().err
