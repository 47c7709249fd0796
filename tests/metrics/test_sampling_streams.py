"""Independent candidate/reference sampling streams and the prepared reference (issue 8, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from gen3deval.compare import PreparedReference, compare, prepare_reference
from gen3deval.errors import UserInputError
from gen3deval.mesh.normalize import normalize
from gen3deval.mesh.sample import sample_surface, stream_seed
from gen3deval.mesh.types import Mesh

TORUS = trimesh.creation.torus(0.35, 0.12, major_sections=48, minor_sections=16)
N = 20_000


def M(tm: trimesh.Trimesh) -> Mesh:
    return Mesh.from_arrays(tm.vertices, tm.faces)


def test_streams_are_independent_and_documented():
    # SeedSequence(seed, spawn_key=(id,)) = the id-th child of SeedSequence(seed).spawn(): candidate 0, ref 1
    kids = np.random.SeedSequence(7).spawn(2)
    for role, kid in zip(("candidate", "reference"), kids, strict=True):
        assert np.array_equal(
            np.random.default_rng(stream_seed(7, role)).random(5), np.random.default_rng(kid).random(5)
        )
    a, _ = sample_surface(M(TORUS), 1000, stream_seed(0, "candidate"))
    b, _ = sample_surface(M(TORUS), 1000, stream_seed(0, "reference"))
    assert not np.isin(a, b).any()  # no shared coordinate at all
    # an int seed stays what it was (bit for bit)
    c, _ = sample_surface(M(TORUS), 1000, 0)
    d, _ = sample_surface(M(TORUS), 1000, np.random.SeedSequence(0))
    assert np.array_equal(c, d)


def test_exact_copy_and_retriangulated_copy_score_alike():
    # Same surface, two tessellations: each triangle split into 4 (subdivide). With one shared stream the
    # exact copy got Chamfer 0 (identical points) while the re-triangulated copy got the sampling noise.
    exact = M(TORUS)
    split = M(TORUS.subdivide())
    r_exact = compare(exact, M(TORUS), samples=N, metrics=["chamfer_l1", "chamfer_l2"])
    r_split = compare(split, M(TORUS), samples=N, metrics=["chamfer_l1", "chamfer_l2"])
    assert r_exact["chamfer_l1"] > 1e-4 and r_exact["chamfer_l2"] > 1e-6  # not ~1e-20
    for key in ("chamfer_l1", "chamfer_l2"):
        assert r_split[key] == pytest.approx(r_exact[key], rel=0.05), key
    # both are the sampling noise of two independent uniform clouds on the surface (planar Poisson process
    # of density N/A: mean nearest-neighbour distance 1/(2 sqrt(N/A)), mean square 1/(pi N/A))
    area = float(normalize(exact, "bbox")[0].face_areas().sum())
    assert r_exact["chamfer_l1"] == pytest.approx(0.5 * np.sqrt(area / N), rel=0.05)
    assert r_exact["chamfer_l2"] == pytest.approx(area / (np.pi * N), rel=0.08)


def test_prepared_reference_gives_the_same_scores():
    cand = TORUS.copy()
    cand.apply_translation([0.02, 0, 0])
    prepared = prepare_reference(M(TORUS), samples=5000, seed=3)
    assert isinstance(prepared, PreparedReference) and prepared.points.shape == (5000, 3)
    keys = ["chamfer_l1", "fscore@0.02", "normal_consistency", "volume_iou", "best_iou"]
    direct = compare(M(cand), M(TORUS), samples=5000, seed=3, metrics=keys)
    assert compare(M(cand), prepared, samples=5000, seed=3, metrics=keys) == direct
    assert compare(M(cand), prepared, samples=5000, seed=3, metrics=keys) == direct  # cached solid reused
    assert "solid" in prepared._cache
    for bad in ({"samples": 4000, "seed": 3}, {"samples": 5000, "seed": 4}, {"normalize": "sphere"}):
        kwargs = {"samples": 5000, "seed": 3, **bad}
        with pytest.raises(UserInputError, match="prepared reference has"):
            compare(M(cand), prepared, metrics=["chamfer_l1"], **kwargs)


def test_prepare_reference_validates():
    with pytest.raises(UserInputError, match="unknown normalize"):
        prepare_reference(M(TORUS), normalize="unit")
    flat = Mesh.from_arrays([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], source="line.ply")
    with pytest.raises(UserInputError, match=r"line\.ply.*zero surface area"):
        prepare_reference(flat)
