"""Offline baselines that need no model: they bound what a metric can say.

- ``oracle``: the reference itself (every score must be perfect; a sanity check of the pipeline).
- ``bbox``: a Three.js program of one box with the reference's extents and centre.
- ``boxes``: a Three.js program of up to ``n`` boxes (default 64) from a coarse voxelisation of the
  reference (``resolution`` voxels along its longest side, default 16): the filled voxels are merged
  greedily into boxes and the ``n`` largest are kept.
- ``sphere``: a Three.js sphere at the reference's bounding-box centre through its farthest vertex.

Programs go through the real Three.js executor like any model's program, so the baselines also test it.
Colours: the area-weighted mean base colour of the reference (so image metrics compare like with like).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import ConfigError
from gen3deval.mesh.types import Mesh
from gen3deval.suites.base import Case
from gen3deval.systems.base import Candidate, GenerationFailed, System


def _need(reference: Mesh | None, system: str, case: Case) -> Mesh:
    if reference is None:
        raise GenerationFailed(
            "generation_error", f"system {system!r} needs a reference mesh; case {case.id!r} has none"
        )
    return reference


def _num(x: float) -> str:
    return f"{float(x):.9g}"


def mean_color(mesh: Mesh) -> tuple[float, float, float]:
    """Area-weighted mean sRGB base colour (textures and vertex colours ignored)."""
    areas = mesh.face_areas()
    base = np.array([m.base_color[:3] for m in mesh.materials], dtype=np.float64)
    if mesh.vertex_colors is not None:
        vc = mesh.vertex_colors[mesh.faces][:, :, :3].mean(axis=1).astype(np.float64)
        per_face = base[mesh.face_material] * vc
    else:
        per_face = base[mesh.face_material]
    total = float(areas.sum())
    c = (per_face * areas[:, None]).sum(axis=0) / total if total > 0 else per_face.mean(axis=0)
    r, g, b = (float(v) for v in np.clip(c, 0.0, 1.0))
    return r, g, b


def _color_js(rgb: tuple[float, float, float]) -> str:
    # THREE.Color.setRGB takes linear values by default in r152+; pass the sRGB colour space explicitly.
    return f"new THREE.Color().setRGB({_num(rgb[0])}, {_num(rgb[1])}, {_num(rgb[2])}, THREE.SRGBColorSpace)"


def boxes_program(boxes: NDArray[np.float64], rgb: tuple[float, float, float], comment: str) -> str:
    """A Three.js program (``createObject(THREE)``) of axis-aligned boxes given as (N, 6) rows of
    centre (x, y, z) and size (sx, sy, sz)."""
    rows = ",\n    ".join("[" + ", ".join(_num(v) for v in b) + "]" for b in boxes)
    return f"""// {comment}
function createObject(THREE) {{
  const boxes = [
    {rows}
  ];
  const material = new THREE.MeshStandardMaterial({{ color: {_color_js(rgb)} }});
  const group = new THREE.Group();
  for (const [x, y, z, sx, sy, sz] of boxes) {{
    const mesh = new THREE.Mesh(new THREE.BoxGeometry(sx, sy, sz), material);
    mesh.position.set(x, y, z);
    group.add(mesh);
  }}
  return group;
}}
"""


def sphere_program(center: NDArray[np.float64], radius: float, rgb: tuple[float, float, float]) -> str:
    """A Three.js program of one UV sphere (64 x 32 segments)."""
    x, y, z = (_num(v) for v in center)
    return f"""// sphere baseline: bounding-box centre, radius to the farthest vertex
function createObject(THREE) {{
  const material = new THREE.MeshStandardMaterial({{ color: {_color_js(rgb)} }});
  const mesh = new THREE.Mesh(new THREE.SphereGeometry({_num(radius)}, 64, 32), material);
  mesh.position.set({x}, {y}, {z});
  return mesh;
}}
"""


def voxelize(
    mesh: Mesh, resolution: int, seed: int = 0
) -> tuple[NDArray[np.bool_], NDArray[np.float64], float]:
    """Solid occupancy of ``mesh`` on a cubic grid with ``resolution`` cells along the longest side.

    Surface cells come from dense area-weighted surface samples (>= ~8 per cell of surface); interior
    cells from filling the enclosed holes, so open meshes still get a solid where they enclose space.
    Returns occupancy (nx, ny, nz), the grid origin (3,) and the cell size.
    """
    from scipy import ndimage

    from gen3deval.mesh.sample import sample_surface

    lo, hi = mesh.bounds
    extent = hi - lo
    h = float(extent.max()) / resolution
    if not h > 0:
        raise GenerationFailed("generation_error", "reference has zero extent")
    dims = np.maximum(1, np.ceil(extent / h - 1e-9).astype(int))
    area = float(mesh.face_areas().sum())
    n = int(np.clip(8.0 * area / h**2, 20_000, 400_000))
    points, normals = sample_surface(mesh, n=n, seed=seed)
    # A face lying exactly on a cell boundary would mark the cell outside it: nudge samples a hair inwards
    # (against the outward face normal) so axis-aligned faces on the grid mark only the cells they bound.
    points = points - normals * (1e-6 * h)
    idx = np.clip(np.floor((points - lo) / h).astype(int), 0, dims - 1)
    occ = np.zeros(tuple(dims), dtype=bool)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    occ = ndimage.binary_fill_holes(occ)
    return occ, lo, h


def merge_boxes(occ: NDArray[np.bool_]) -> list[tuple[int, int, int, int, int, int]]:
    """Greedy decomposition of filled cells into disjoint boxes (i0, j0, k0, i1, j1, k1), ends exclusive.

    In scan order, each unclaimed filled cell grows a box along axis 0, then 1, then 2, as far as every
    cell it would add is filled and unclaimed. Deterministic; covers every filled cell exactly once.
    """
    free = occ.copy()
    nx, ny, nz = free.shape
    boxes: list[tuple[int, int, int, int, int, int]] = []
    for i, j, k in zip(*np.nonzero(free), strict=True):
        if not free[i, j, k]:
            continue
        i1 = i + 1
        while i1 < nx and free[i1, j, k]:
            i1 += 1
        j1 = j + 1
        while j1 < ny and free[i:i1, j1, k].all():
            j1 += 1
        k1 = k + 1
        while k1 < nz and free[i:i1, j:j1, k1].all():
            k1 += 1
        free[i:i1, j:j1, k:k1] = False
        boxes.append((int(i), int(j), int(k), int(i1), int(j1), int(k1)))
    return boxes


class OracleSystem(System):
    """The reference itself."""

    name: ClassVar[str] = "oracle"
    description: ClassVar[str] = "the reference mesh itself (scores must be perfect)"
    needs_reference: ClassVar[bool] = True
    output: ClassVar[str] = "mesh"

    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        from gen3deval.mesh.io import save_mesh

        ref = _need(reference, self.name, case)
        if ref.source and Path(ref.source).suffix.lower() == ".glb" and Path(ref.source).is_file():
            return Candidate(mesh_path=ref.source)
        return Candidate(mesh_path=str(save_mesh(ref, Path(workdir) / "oracle.glb")))


class BBoxSystem(System):
    """One box with the reference's axis-aligned extents and centre."""

    name: ClassVar[str] = "bbox"
    description: ClassVar[str] = "Three.js: one box with the reference's extents and centre"
    needs_reference: ClassVar[bool] = True
    output: ClassVar[str] = "program"
    language: ClassVar[str] = "threejs"  # the runtime the run checks before any work

    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        ref = _need(reference, self.name, case)
        lo, hi = ref.bounds
        # A flat reference (a plane) would give a zero-thickness box: keep a sliver so it has triangles.
        size = np.maximum(hi - lo, 1e-6 * float(np.max(hi - lo)))
        box = np.concatenate([(lo + hi) / 2.0, size])[None, :]
        return Candidate(
            program=boxes_program(box, mean_color(ref), "bbox baseline: the reference's bounding box"),
            language="threejs",
        )


class BoxesSystem(System):
    """Up to ``n`` boxes from a coarse voxelisation of the reference."""

    name: ClassVar[str] = "boxes"
    description: ClassVar[str] = "Three.js: up to n boxes (default 64) merged from a coarse voxelisation"
    needs_reference: ClassVar[bool] = True
    output: ClassVar[str] = "program"
    language: ClassVar[str] = "threejs"  # the runtime the run checks before any work
    settings_schema: ClassVar[dict[str, tuple[Any, Any]]] = {"n": (int, 64), "resolution": (int, 16)}

    @classmethod
    def check_settings(cls, settings: dict[str, Any], where: str) -> None:
        if not 1 <= settings["n"] <= 100_000:
            raise ConfigError(f"{where}.n: expected 1..100000 boxes, got {settings['n']}")
        if not 1 <= settings["resolution"] <= 256:
            raise ConfigError(f"{where}.resolution: expected 1..256 cells, got {settings['resolution']}")

    def boxes(self, reference: Mesh) -> NDArray[np.float64]:
        """(N, 6) centre + size rows of the kept boxes, largest first."""
        occ, origin, h = voxelize(reference, self.settings["resolution"])
        merged = merge_boxes(occ)
        if not merged:
            raise GenerationFailed("generation_error", "voxelisation of the reference is empty")
        ijk = np.array(merged, dtype=np.float64)
        volume = np.prod(ijk[:, 3:] - ijk[:, :3], axis=1)
        # Largest first; a stable sort keeps scan order among equal volumes (deterministic).
        keep = np.argsort(-volume, kind="stable")[: self.settings["n"]]
        lo = origin + ijk[keep, :3] * h
        hi = np.minimum(origin + ijk[keep, 3:] * h, reference.bounds[1])  # the grid may overhang the max side
        return np.concatenate([(lo + hi) / 2.0, hi - lo], axis=1)

    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        ref = _need(reference, self.name, case)
        boxes = self.boxes(ref)
        comment = (
            f"boxes baseline: {len(boxes)} boxes from a {self.settings['resolution']}-cell voxelisation "
            f"(n = {self.settings['n']})"
        )
        return Candidate(program=boxes_program(boxes, mean_color(ref), comment), language="threejs")


class SphereSystem(System):
    """A sphere at the reference's bounding-box centre, radius to its farthest vertex."""

    name: ClassVar[str] = "sphere"
    description: ClassVar[str] = "Three.js: a sphere at the reference's bbox centre and radius"
    needs_reference: ClassVar[bool] = True
    output: ClassVar[str] = "program"
    language: ClassVar[str] = "threejs"  # the runtime the run checks before any work

    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        ref = _need(reference, self.name, case)
        lo, hi = ref.bounds
        center = (lo + hi) / 2.0
        radius = float(np.max(np.linalg.norm(ref.vertices - center, axis=1)))
        return Candidate(program=sphere_program(center, radius, mean_color(ref)), language="threejs")


def describe() -> dict[str, Any]:
    """{name: description} of the baselines (for ``gen3deval list``)."""
    return {c.name: c.description for c in (OracleSystem, BBoxSystem, BoxesSystem, SphereSystem)}
