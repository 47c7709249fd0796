"""compat:mecagent IoU (metrics/compat_mecagent.py) and its report block (report/compat.py).

Expected values are computed independently: surface voxel sets of axis-aligned boxes are index shells
(every face of a normalised box rounds to the layer round(h / pitch)), and best_iou of centred boxes is the
analytic volume ratio. The cases show where the compat IoU differs from gen3deval's: a mirror image scores 1,
a plate of twice the thickness or a hollow plate scores 1 (surface voxels only).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from gen3deval.errors import UserInputError
from gen3deval.mesh.types import Mesh
from gen3deval.metrics import compat_mecagent as cm
from gen3deval.metrics.volume import best_iou_value

_FACES = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
)  # fmt: skip


def boxes(*parts: tuple[list[float], list[float], bool]) -> Mesh:
    """Axis-aligned boxes (lo, hi, inward) as one mesh; inward boxes are cavities."""
    vs, fs, n = [], [], 0
    corners = np.array(list(itertools.product((0, 1), repeat=3)), dtype=float)
    for lo, hi, inward in parts:
        lo_, hi_ = np.asarray(lo, float), np.asarray(hi, float)
        vs.append(lo_ + corners * (hi_ - lo_))
        fs.append((_FACES[:, ::-1] if inward else _FACES) + n)
        n += 8
    return Mesh.from_arrays(np.vstack(vs), np.vstack(fs))


def box(dims: tuple[float, float, float]) -> Mesh:
    h = np.asarray(dims, float) / 2
    return boxes((list(-h), list(h), False))


def shell_keys(half_index: np.ndarray) -> set[tuple[int, int, int]]:
    """Index triples of the surface of the index box [-n, n] (the expected voxels of a centred box)."""
    nx, ny, nz = (int(v) for v in half_index)
    full = itertools.product(range(-nx, nx + 1), range(-ny, ny + 1), range(-nz, nz + 1))
    return {(i, j, k) for i, j, k in full if abs(i) == nx or abs(j) == ny or abs(k) == nz}


def expected_half_index(dims: tuple[float, float, float]) -> np.ndarray:
    """round(h / pitch) of a box normalised by its radius of gyration r_g = sqrt(sum(d^2) / 12)."""
    d = np.asarray(dims, float)
    r_g = np.sqrt((d**2).sum() / 12.0)
    return np.round(d / 2 / r_g / cm.PITCH).astype(int)


def test_cube_surface_voxels_are_the_index_shell_without_interior() -> None:
    # a cube normalises to side 2 (r_g = s/2): 41^3 - 39^3 surface voxels, none inside
    from gen3deval.mesh.normalize import normalize

    n, _ = normalize(box((6.0, 6.0, 6.0)), "inertia")
    vox = cm.surface_voxels(n.vertices, n.faces)
    assert len(vox) == 41**3 - 39**3 == 9602
    assert set(map(tuple, vox.tolist())) == shell_keys(np.array([20, 20, 20]))


def test_surface_voxels_subdivide_until_edges_under_half_pitch() -> None:
    # one square [0, 1]^2 at z = 0: every voxel centre of the 21 x 21 face layer is hit
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    vox = cm.surface_voxels(v, f)
    assert len(vox) == 21 * 21 and set(vox[:, 2].tolist()) == {0}
    # a triangle already small enough is not subdivided: only its corners count
    tiny = np.array([[0.0, 0.0, 0.0], [0.02, 0.0, 0.0], [0.0, 0.02, 0.0]])
    assert cm.surface_voxels(tiny, np.array([[0, 1, 2]])).tolist() == [[0, 0, 0]]


def test_box_vs_box_matches_the_analytic_shells() -> None:
    ref_dims, cand_dims = (14.0, 10.0, 2.0), (12.0, 9.0, 3.0)
    a = shell_keys(expected_half_index(cand_dims))
    b = shell_keys(expected_half_index(ref_dims))
    expected = len(a & b) / len(a | b)
    got = cm.compat_mecagent_iou(box(cand_dims), box(ref_dims))
    assert got == pytest.approx(expected, abs=1e-12)
    assert cm.compat_mecagent_iou(box(ref_dims), box(ref_dims)) == 1.0


def test_mirror_image_scores_one_here_and_not_in_best_iou() -> None:
    # a chiral shape: cubes at the corners of a rhombic disphenoid (symmetry D2: rotations only)
    p, s = np.array([1.0, 0.6, 0.3]), 0.25
    signs = ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])
    shape = boxes(*[(list(p * g - s), list(p * g + s), False) for g in map(np.array, signs)])
    mv = shape.vertices.copy()
    mv[:, 0] *= -1
    mirror = Mesh.from_arrays(mv, shape.faces[:, ::-1])
    detail = cm.compat_mecagent_detail(mirror, shape)
    assert detail.value == 1.0 and detail.reflected is True
    best = best_iou_value(mirror, shape)
    assert best is not None and best < 0.5  # proper rotations cannot undo a reflection


@pytest.mark.slow  # ~10 s: long sliver triangles subdivide 8 times
def test_thin_plate_scores_on_its_outline() -> None:
    # plates 0.3 and 0.5 thick both voxelise to the layers z = +-1 (and the rim between): the same voxels
    plate, thicker = box((10.0, 8.0, 0.3)), box((10.0, 8.0, 0.5))
    assert cm.compat_mecagent_iou(thicker, plate) == 1.0
    assert best_iou_value(thicker, plate) == pytest.approx(0.6, abs=1e-4)
    # a hollow plate, walls 0.01 (outer shell + inward cavity): 6.5% of the solid, 85% here
    w = 0.01
    hollow = boxes(
        ([-5, -4, -0.15], [5, 4, 0.15], False), ([-5 + w, -4 + w, -0.15 + w], [5 - w, 4 - w, 0.15 - w], True)
    )
    compat, solid = cm.compat_mecagent_iou(hollow, plate), best_iou_value(hollow, plate)
    assert compat is not None and solid is not None
    assert compat > 0.8 and solid < 0.1


def test_frame_is_mapped_back_to_cadquery_z_up() -> None:
    # the executor writes (x, y, z) -> (x, z, -y); up="y" undoes it exactly, so both calls see the same mesh
    ref, cand = box((14.0, 10.0, 2.0)), box((12.0, 9.0, 3.0))
    rot = np.array([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [-0.8, 0.0, 0.6]])  # not a lattice symmetry
    ref_z, cand_z = ref.transformed(_h(rot)), cand.transformed(_h(rot))
    to_y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    ref_y, cand_y = ref_z.transformed(_h(to_y)), cand_z.transformed(_h(to_y))
    assert cm.compat_mecagent_iou(cand_y, ref_y, up="y") == cm.compat_mecagent_iou(cand_z, ref_z, up="z")
    with pytest.raises(UserInputError, match="up must be"):
        cm.compat_mecagent_iou(cand_z, ref_z, up="x")


def _h(rot: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot
    return m


def test_subdivision_cap_gives_undefined_not_a_crash() -> None:
    # a cube plus a far, very thin rod 40 r_g long: their script stops with 'max_iter exceeded!'
    mesh = boxes(([-1, -1, -1], [1, 1, 1], False), ([2, 0, 0], [42, 1e-3, 1e-3], False))
    detail = cm.compat_mecagent_detail(mesh, box((2.0, 2.0, 2.0)))
    assert detail.value is None and "max_iter" in detail.reason
    with pytest.raises(cm.SubdivisionCapExceeded):
        cm.surface_voxels(np.array([[0, 0, 0], [30, 0, 0], [0, 0.01, 0]], float), np.array([[0, 1, 2]]))


def test_bad_meshes_get_clear_errors() -> None:
    empty = Mesh.from_arrays(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64), source="cand.stl")
    with pytest.raises(UserInputError, match=r"cand\.stl: mesh has no faces"):
        cm.compat_mecagent_iou(empty, box((1.0, 2.0, 3.0)))


# ---------------------------------------------------------------------------------------------- report ---
def _rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    # system a: 4 cases, 1 failure; its compat mean ignores the failure
    for i, (ok, mec, best) in enumerate(
        [(True, 0.9, 0.6), (True, 0.7, 0.4), (True, 0.8, 0.5), (False, None, None)]
    ):
        rows.append({"case": f"c{i}", "system": "a", "attempt": 1, "executable": ok, "error_class": None if ok
                     else "syntax", "mecagent_iou": mec, "best_iou": best})  # fmt: skip
    for i in range(4):
        rows.append({"case": f"c{i}", "system": "b", "attempt": 1, "executable": True, "mecagent_iou": 0.5,
                     "best_iou": 0.5})  # fmt: skip
    return rows


def test_compat_block_reports_valid_only_mean_beside_the_honest_numbers() -> None:
    from gen3deval.report import summarize
    from gen3deval.report.compat import compat_block, compat_html
    from gen3deval.report.jsonio import dumps

    rows = _rows()
    summary = summarize(rows, {"systems": ["a", "b"]}, n_resamples=200)
    block = compat_block(rows, summary)
    assert block is not None and block["name"] == "compat:mecagent"
    a = next(s for s in block["systems"] if s["system"] == "a")
    assert a["compat"]["mean_iou"].value == pytest.approx((0.9 + 0.7 + 0.8) / 3)  # failures dropped
    assert a["compat"]["vsr"].value == pytest.approx(0.75)
    assert a["honest"]["best_iou_all"].value == pytest.approx((0.6 + 0.4 + 0.5 + 0.0) / 4)  # failure = 0
    assert a["honest"]["best_iou_valid"].value == pytest.approx(0.5)
    assert a["honest"]["vsr"].value == pytest.approx(0.75)
    json.loads(dumps(block))  # JSON-ready
    html = compat_html(block)
    assert "compat:mecagent" in html and "80.0" in html and "37.5" in html
    assert compat_html(None) == ""


def test_compat_block_absent_without_the_metric_and_escapes_names() -> None:
    from gen3deval.report import summarize
    from gen3deval.report.compat import compat_block, compat_html

    rows = [{"case": "c", "system": "<b>x</b>", "executable": True, "best_iou": 0.5}]
    summary = summarize(rows, {}, n_resamples=50)
    assert compat_block(rows, summary) is None
    rows[0]["mecagent_iou"] = 0.7
    html = compat_html(compat_block(rows, summarize(rows, {}, n_resamples=50)))
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
