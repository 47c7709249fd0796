"""The public compare operation: protocol order, keys, determinism, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from gen3deval.compare import compare, default_metric_keys
from gen3deval.errors import MeshLoadError, UserInputError
from gen3deval.mesh.types import Mesh


def M(tm: trimesh.Trimesh, source: str = "") -> Mesh:
    return Mesh.from_arrays(tm.vertices, tm.faces, source=source)


SPHERE = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
BIG_SPHERE = trimesh.creation.icosphere(subdivisions=4, radius=0.53)
TORUS = trimesh.creation.torus(0.35, 0.12, major_sections=48, minor_sections=16)
BOX = trimesh.creation.box(extents=[1.0, 0.4, 0.8])


def test_default_keys_and_companions():
    r = compare(M(SPHERE), M(TORUS), samples=5000)
    expected = default_metric_keys()
    assert expected == [
        "chamfer_l1",
        "chamfer_l2",
        "chamfer_l2_sum",
        "hausdorff",
        "fscore@0.01",
        "fscore@0.02",
        "fscore@0.05",
        "normal_consistency",
        "volume_iou",
    ]
    assert [k for k in r if k in expected] == expected
    assert r["volume_iou_method"] == "exact"
    assert r["alignment"] == {"method": "none", "matrix": np.eye(4).tolist()}
    assert all(isinstance(r[k], float) for k in expected)
    json.dumps(r)  # JSON-ready
    assert default_metric_keys([0.1]) == [*expected[:4], "fscore@0.1", *expected[7:]]


def test_analytic_spheres_without_normalisation():
    r = compare(M(SPHERE), M(BIG_SPHERE), normalize="none", samples=30_000)
    assert r["chamfer_l1"] == pytest.approx(0.03, abs=1e-3)  # tessellation sagitta at 4 subdivisions < 1e-3
    assert r["fscore@0.02"] == 0.0 and r["fscore@0.05"] == 1.0
    assert r["normal_consistency"] > 0.999
    # polyhedra inscribed in the spheres: IoU = volume ratio (0.5/0.53)^3 to the tessellation error
    assert r["volume_iou"] == pytest.approx((0.5 / 0.53) ** 3, abs=2e-3)
    # bbox normalisation makes the two spheres the same shape: what is left is the sampling noise of two
    # independent clouds (see test_identical_meshes_score_the_sampling_noise)
    rn = compare(M(SPHERE), M(BIG_SPHERE), samples=30_000)
    assert rn["chamfer_l1"] == pytest.approx(poisson_chamfer_l1(M(SPHERE), 30_000), rel=0.05)
    assert rn["volume_iou"] == pytest.approx(1.0, abs=1e-9)


def poisson_chamfer_l1(mesh: Mesh, n: int) -> float:
    """chamfer_l1 of two independent uniform n-point samples of the same bbox-normalised surface of area A:
    the mean nearest-neighbour distance of a planar Poisson process of density n/A, 1/(2 sqrt(n/A))."""
    from gen3deval.mesh.normalize import normalize

    area = float(normalize(mesh, "bbox")[0].face_areas().sum())
    return 0.5 * float(np.sqrt(area / n))


def test_identical_meshes_are_perfect():
    r = compare(M(TORUS), M(TORUS), samples=5000, metrics=[*default_metric_keys(), "best_iou"])
    # independent samples of the same surface: distances are the sampling noise, not 0 (PROTOCOLS.md 4)
    assert r["chamfer_l1"] == pytest.approx(poisson_chamfer_l1(M(TORUS), 5000), rel=0.1)
    assert 0 < r["hausdorff"] < 0.05
    assert r["fscore@0.05"] == 1.0
    assert r["normal_consistency"] > 0.99
    assert r["volume_iou"] == pytest.approx(1.0, abs=1e-12)
    assert r["best_iou"] == pytest.approx(1.0, abs=1e-9)
    assert r["best_iou_method"] == "exact" and len(r["best_iou_alignment"]["matrix"]) == 4


def test_metric_selection_and_order():
    r = compare(M(SPHERE), M(TORUS), samples=2000, metrics=["fscore@0.1", "hausdorff"])
    assert [k for k in r if k != "alignment"] == ["fscore@0.1", "hausdorff"]


def test_deterministic_bit_for_bit():
    kwargs = dict(align="rot24+icp", samples=10_000, metrics=[*default_metric_keys(), "best_iou"])
    cand = M(TORUS).transformed(np.diag([1.0, 2.0, 1.0, 1.0]))
    first = compare(cand, M(BOX), **kwargs)
    second = compare(cand, M(BOX), **kwargs)
    assert first == second  # exact float equality, key by key, including the alignment matrix


def test_deterministic_across_processes_and_thread_counts(tmp_path):
    # A fresh interpreter with a single OpenMP thread (pykdtree) must give the same numbers, bit for bit.
    from gen3deval.mesh.io import save_mesh

    a, b = tmp_path / "a.ply", tmp_path / "b.ply"
    save_mesh(M(TORUS), a)
    save_mesh(M(BOX), b)
    code = (
        "import json, sys; from gen3deval.compare import compare; "
        "r = compare(sys.argv[1], sys.argv[2], align='pca+icp', samples=10000); "
        "print(json.dumps({k: float(v).hex() for k, v in r.items() if isinstance(v, float)}))"
    )
    here = compare(str(a), str(b), align="pca+icp", samples=10_000)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code, str(a), str(b)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    there = json.loads(out.stdout)
    assert there == {k: float(v).hex() for k, v in here.items() if isinstance(v, float)}


def test_paths_load_like_meshes(tmp_path):
    from gen3deval.mesh.io import load_mesh, save_mesh

    p = tmp_path / "torus.glb"
    save_mesh(M(TORUS), p)
    by_path = compare(p, str(p), samples=2000)
    loaded = load_mesh(p)
    assert by_path == compare(loaded, loaded, samples=2000)


def test_unknown_metric_lists_known_ones():
    with pytest.raises(UserInputError, match=r"unknown metric 'chamfer'; known: chamfer_l1.*volume_iou"):
        compare(M(SPHERE), M(SPHERE), metrics=["chamfer"])
    with pytest.raises(UserInputError, match="image metric"):
        compare(M(SPHERE), M(SPHERE), metrics=["psnr"])


def test_bad_options_fail_before_work():
    with pytest.raises(UserInputError, match="normalize"):
        compare(M(SPHERE), M(SPHERE), normalize="unit")
    with pytest.raises(UserInputError, match="align"):
        compare(M(SPHERE), M(SPHERE), align="icp")
    with pytest.raises(UserInputError, match="thresholds"):
        compare(M(SPHERE), M(SPHERE), thresholds=(0.01, 0.0))
    with pytest.raises(UserInputError, match="samples"):
        compare(M(SPHERE), M(SPHERE), samples=0)


def test_bad_meshes_are_named(tmp_path):
    with pytest.raises(MeshLoadError, match=r"missing\.glb"):
        compare(tmp_path / "missing.glb", M(SPHERE))
    empty = Mesh.from_arrays(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), source="gen/empty.obj")
    with pytest.raises(UserInputError, match=r"gen/empty\.obj.*no faces"):
        compare(empty, M(SPHERE))
    flat = Mesh.from_arrays([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], source="line.ply")
    with pytest.raises(UserInputError, match=r"line\.ply.*zero surface area"):
        compare(M(SPHERE), flat)
    with pytest.raises(UserInputError, match="expected a Mesh"):
        compare(42, M(SPHERE))  # type: ignore[arg-type]


def test_package_level_names_stay_callable():
    # gen3deval.compare / gen3deval.mesh.align share their names with their modules; once the module is
    # imported the package attribute is the module, which must still behave like the function.
    import gen3deval
    import gen3deval.compare
    import gen3deval.mesh
    import gen3deval.mesh.align

    m = M(SPHERE)
    got = gen3deval.compare(m, m, samples=500, metrics=["chamfer_l1"])["chamfer_l1"]
    assert got == gen3deval.compare.compare(m, m, samples=500, metrics=["chamfer_l1"])["chamfer_l1"] > 0
    assert np.array_equal(gen3deval.mesh.align(m, m, "none")[1], np.eye(4))
