"""The shading model shared by the GL renderer and the ray-cast renderer, and mesh preparation.

Shading (both renderers, in linear RGB, then encoded to 8-bit sRGB after compositing):

    colour = albedo * min(1, AMBIENT + sum_k I_k * max(0, n_cam . l_k))

- ``n_cam``: the flat face normal in camera space, flipped to face the camera (double-sided lighting,
  because generated meshes often have inconsistent winding).
- Lights are fixed **relative to the camera** (so every view of a rig is lit the same way): ``LIGHTS``
  lists (direction towards the light in camera space, +X right, +Y up, +Z towards the viewer; intensity):
  a key light from the upper left front and a weaker fill light from the right.
- ``albedo`` (``material='asset'``): material base colour x base-colour texture at the uv (if the mesh has
  uv and the material a texture) x vertex colour, each decoded from sRGB to linear. Alpha is ignored
  (everything renders opaque). ``material='grey'``: sRGB ``GREY_SRGB`` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import ConfigError, UserInputError
from gen3deval.mesh.normalize import normalize as normalize_mesh
from gen3deval.mesh.types import Mesh

AMBIENT = 0.3
LIGHTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((-0.4, 0.6, 0.7), 0.6),  # key: upper left, in front
    ((0.6, -0.1, 0.8), 0.25),  # fill: right, slightly below
)
GREY_SRGB = 0.7
BACKGROUNDS: dict[str, float] = {"white": 1.0, "black": 0.0}
MATERIALS = ("asset", "grey")


def light_dirs() -> NDArray[np.float64]:
    """(K, 3) unit light directions in camera space."""
    d = np.array([ld for ld, _ in LIGHTS], dtype=np.float64)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def light_intensities() -> NDArray[np.float64]:
    return np.array([i for _, i in LIGHTS], dtype=np.float64)


def srgb_to_linear(c: NDArray[np.floating] | float) -> NDArray[np.float64]:
    """sRGB-encoded values in [0, 1] -> linear (IEC 61966-2-1)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: NDArray[np.floating] | float) -> NDArray[np.float64]:
    """Linear values -> sRGB-encoded values in [0, 1] (clamped)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


def shade(normals_cam: NDArray[np.floating], albedo_lin: NDArray[np.floating]) -> NDArray[np.float64]:
    """Linear colour (..., 3) from camera-space unit normals (..., 3) that face the camera and linear albedo."""
    lam = np.maximum(np.asarray(normals_cam, dtype=np.float64) @ light_dirs().T, 0.0) @ light_intensities()
    return np.asarray(albedo_lin, dtype=np.float64) * np.minimum(1.0, AMBIENT + lam)[..., None]


def check_options(material: str, background: str) -> None:
    if material not in MATERIALS:
        raise ConfigError(f"unknown material {material!r}; choose one of {', '.join(MATERIALS)}")
    if background not in BACKGROUNDS:
        raise ConfigError(f"unknown background {background!r}; choose one of {', '.join(BACKGROUNDS)}")


@dataclass
class Prepared:
    """A mesh ready to render (after optional bbox normalisation), shared by both renderers.

    Attributes:
        mesh: the (normalised) mesh.
        base: (M, 3) float32 linear base colour per material.
        vcol: (V, 3) float32 linear vertex colours, or None.
        uv: (V, 2) float32 glTF uv (v down: v = 0 is the first texture row), or None.
        textures: material index -> (H, W, 4) uint8 sRGB texture, for materials that have one (only when
            the mesh has uv).
        center, radius: a bounding sphere (bbox centre, farthest vertex), to choose clip planes.
        box: (2, 3) axis-aligned bounding box (min, max corners).
    """

    mesh: Mesh
    base: NDArray[np.float32]
    vcol: NDArray[np.float32] | None = None
    uv: NDArray[np.float32] | None = None
    textures: dict[int, NDArray[np.uint8]] = field(default_factory=dict)
    center: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    radius: float = 0.0
    box: NDArray[np.float64] = field(default_factory=lambda: np.zeros((2, 3)))

    @property
    def n_faces(self) -> int:
        return self.mesh.n_faces


def bounds(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """(2, 3) min and max corners of (N, 3) points, N >= 1 (the same as ``Mesh.bounds``, one column at a
    time: numpy reduces an (N, 3) array along axis 0 about ten times slower)."""
    return np.array([[v[:, i].min() for i in range(3)], [v[:, i].max() for i in range(3)]])


def prepare(mesh: Mesh, normalize: bool = True) -> Prepared:
    """Validate ``mesh``, bbox-normalise it when ``normalize``, and decode its colours to linear."""
    name = mesh.source or "mesh"
    f = mesh.faces
    nv = len(mesh.vertices)
    if len(f) and (f.min() < 0 or f.max() >= nv):
        raise UserInputError(f"{name}: face indices out of range for {nv} vertices")
    if len(f) and not np.isfinite(mesh.vertices).all():
        raise UserInputError(f"{name}: vertices contain NaN or infinite coordinates")
    n_mat = len(mesh.materials)
    fm = np.asarray(mesh.face_material)
    if len(fm) != len(f):
        raise UserInputError(f"{name}: face_material has {len(fm)} entries for {len(f)} faces")
    if len(fm) and (fm.min() < 0 or fm.max() >= n_mat):
        raise UserInputError(f"{name}: face_material indices out of range for {n_mat} materials")
    for attr, width in (("vertex_colors", (3, 4)), ("uv", (2,))):
        a = getattr(mesh, attr)
        if a is not None and (np.ndim(a) != 2 or len(a) != nv or np.shape(a)[1] not in width):
            raise UserInputError(f"{name}: {attr} has shape {np.shape(a)}, expected ({nv}, {width[-1]})")
    if normalize and len(f):
        mesh, _ = normalize_mesh(mesh, "bbox")
    base = srgb_to_linear(
        np.array([m.base_color[:3] for m in mesh.materials], dtype=np.float64).reshape(-1, 3)
    )
    vcol = None
    if mesh.vertex_colors is not None:
        vcol = srgb_to_linear(np.asarray(mesh.vertex_colors, dtype=np.float64)[:, :3]).astype(np.float32)
    uv = None
    textures: dict[int, NDArray[np.uint8]] = {}
    if mesh.uv is not None:
        uv = np.ascontiguousarray(mesh.uv, dtype=np.float32)
        for i, m in enumerate(mesh.materials):
            if m.texture is not None:
                textures[i] = _rgba8(m.texture, name)
    if len(f):
        box = bounds(mesh.vertices)
        center = (box[0] + box[1]) / 2.0
        radius = _max_distance(mesh.vertices, center)
    else:
        box, center, radius = np.zeros((2, 3)), np.zeros(3), 0.0
    return Prepared(
        mesh=mesh,
        base=base.astype(np.float32),
        vcol=vcol,
        uv=uv,
        textures=textures,
        center=center,
        radius=radius,
        box=box,
    )


def _max_distance(v: NDArray[np.float64], center: NDArray[np.float64]) -> float:
    """Largest Euclidean distance from ``center`` (3,) to the (N, 3) points, one column at a time."""
    d2 = np.zeros(len(v))
    for i in range(3):
        c = v[:, i] - center[i]
        c *= c
        d2 += c
    return float(np.sqrt(d2.max()))


def face_cross(vertices: NDArray[np.float64], faces: NDArray[np.integer]) -> NDArray[np.float64]:
    """(3, F) float64 cross products (v1 - v0) x (v2 - v0) of the faces, one row per coordinate (x, y, z):
    normals (right-hand rule on the winding) of length twice the face area."""
    vt = np.ascontiguousarray(np.asarray(vertices, dtype=np.float64).T)  # (3, V): one gather per row
    ft = np.ascontiguousarray(np.asarray(faces).T)
    p0 = vt.take(ft[0], axis=1)
    a = vt.take(ft[1], axis=1)
    a -= p0
    b = vt.take(ft[2], axis=1)
    b -= p0
    out, tmp = p0, np.empty(ft.shape[1])  # in place: fewer fresh arrays (each costs page faults)
    for k, (i, j) in enumerate(((1, 2), (2, 0), (0, 1))):
        np.multiply(a[i], b[j], out=out[k])
        np.multiply(a[j], b[i], out=tmp)
        out[k] -= tmp
    return out


def unit_normals(cross: NDArray[np.float64]) -> NDArray[np.float32]:
    """(F, 3) float32 unit normals from (3, F) :func:`face_cross` rows; zero for degenerate faces."""
    norm = np.sqrt(cross[0] * cross[0] + cross[1] * cross[1] + cross[2] * cross[2])
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    out = np.empty((cross.shape[1], 3), dtype=np.float32)
    for j in range(3):
        np.multiply(cross[j], inv, out=out[:, j], casting="same_kind")
    return out


def _mix64(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finaliser: a well-mixed 64-bit hash of 64-bit keys (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def closed_orientation(mesh: Mesh, cross: NDArray[np.float64] | None = None) -> int:
    """+1 if ``mesh`` is a closed, consistently wound surface whose every connected part faces outwards
    (positive volume), -1 if every part faces inwards, 0 otherwise (open, badly wound, mixed).

    Seen from outside such a mesh, the first surface a ray meets faces the ray, so a rasteriser may cull
    the faces turned away without changing a pixel. Vertices at the same position count as one (split
    uv/normal seams). "Closed and consistently wound" is tested as: every directed edge a->b is balanced
    by an edge b->a (the boundary of the surface is empty), i.e. sum over edges of (x_a y_b - x_b y_a) = 0
    for pseudo-random 64-bit weights x, y per position (hashes of its coordinates' bits) in exact modular
    arithmetic (an unbalanced mesh passes with probability ~2^-60). Parts are the connected components of
    the mesh (sharing a position connects).
    ``cross``: :func:`face_cross` of the mesh, if already computed.
    """
    f = mesh.faces
    if len(f) == 0:
        return 0
    v = mesh.vertices + 0.0  # -0.0 -> 0.0 so that equal positions have equal bits
    bits = np.ascontiguousarray(v).view(np.uint64).reshape(-1, 3)
    key = _mix64(_mix64(_mix64(bits[:, 0]) ^ bits[:, 1]) ^ bits[:, 2])
    ft = np.ascontiguousarray(f.T, dtype=np.int32)  # (3, F): contiguous per corner, for fast gathers
    # The weights are hashes of the positions, so vertices at the same position (split seams) weigh the
    # same without being merged first: an open mesh, the common case, is rejected without a sort.
    x, y = _mix64(key ^ np.uint64(0x9E3779B97F4A7C15)), _mix64(key ^ np.uint64(0xD1B54A32D192ED03))
    xg, yg = x[ft], y[ft]  # (3, F)
    # Edges 0->1, 1->2, 2->0 of each face: x0 y1 - x1 y0 + x1 y2 - x2 y1 + x2 y0 - x0 y2.
    bal = xg[0] * (yg[1] - yg[2]) + xg[1] * (yg[2] - yg[0]) + xg[2] * (yg[0] - yg[1])
    if int(np.sum(bal)) != 0:
        return 0
    # Closed: merge the vertices at the same position (parts connect through them) to find the parts.
    order = np.argsort(key)
    sk = key[order]
    new = np.empty(len(v), dtype=bool)
    new[0] = True
    # Equal positions have equal hashes, so they are adjacent after sorting by the hash; positions are
    # compared only where hashes are equal (a rare collision of different positions stays two vertices).
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    if new.all():
        g, n = ft, len(v)  # no shared positions: the vertices are already unique
    else:
        same = np.flatnonzero(~new[1:])
        new[same + 1] = np.any(v[order[same + 1]] != v[order[same]], axis=1)
        ids = np.empty(len(v), dtype=np.int32)
        ids[order] = np.cumsum(new) - 1
        g, n = ids[ft], int(ids[order[-1]]) + 1
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # Parts: the components of the graph of (merged) vertices with the edges 0-1 and 0-2 of each face
    # (enough to connect its corners); about twice as fast as components of the face-vertex graph.
    # Vertices in no face become parts without faces and are ignored.
    nf = len(f)
    edges = coo_matrix((np.ones(2 * nf), (np.concatenate([g[0], g[0]]), g[1:].ravel())), shape=(n, n))
    n_parts, labels = connected_components(edges.tocsr(), directed=False)
    face_part = labels[g[0]]
    # Six times the signed volume of each face's tetrahedron with the centroid c: (v0 - c) . cross.
    # (Per-column reductions: numpy reduces an (N, 3) array along axis 0 several times slower.)
    if cross is None:
        cross = face_cross(v, f)
    vc = np.ascontiguousarray(v.T)
    for row in vc:
        row -= row.mean()
    i0 = ft[0]
    six_vol = vc[0][i0] * cross[0] + vc[1][i0] * cross[1] + vc[2][i0] * cross[2]
    per_part = np.bincount(face_part, weights=six_vol, minlength=n_parts)
    per_part = per_part[np.bincount(face_part, minlength=n_parts) > 0]
    extent = max(float(row.max() - row.min()) for row in vc)
    eps = 1e-9 * extent**3
    if np.all(per_part > eps):
        return 1
    if np.all(per_part < -eps):
        return -1
    return 0


def _rgba8(tex: NDArray[np.uint8], name: str) -> NDArray[np.uint8]:
    t = np.asarray(tex)
    if t.ndim == 2:
        t = t[:, :, None]
    if t.ndim != 3 or t.shape[2] not in (1, 2, 3, 4) or t.shape[0] < 1 or t.shape[1] < 1:
        raise UserInputError(f"{name}: texture must be (H, W, 1..4), got shape {t.shape}")
    if t.dtype != np.uint8:
        t = np.clip(np.round(t * 255.0 if np.issubdtype(t.dtype, np.floating) else t), 0, 255).astype(
            np.uint8
        )
    if t.shape[2] in (1, 2):  # grey (+ alpha)
        t = np.concatenate(
            [t[:, :, :1]] * 3 + [t[:, :, 1:] if t.shape[2] == 2 else np.full_like(t[:, :, :1], 255)], axis=2
        )
    elif t.shape[2] == 3:
        t = np.concatenate([t, np.full_like(t[:, :, :1], 255)], axis=2)
    return np.ascontiguousarray(t)


def depth_range(view: NDArray[np.float64], center: NDArray[np.float64], radius: float) -> tuple[float, float]:
    """Near and far planes (depths along the viewing axis) enclosing the bounding sphere (``center``,
    ``radius``) seen through the (4, 4) world-to-camera ``view``, with 1% slack (tight, for depth precision).

    Planes are depths along the viewing axis, not distances: the camera looks at the origin, so a sphere off
    that axis (an off-centre mesh rendered with ``normalize=False``) starts nearer than distance - radius,
    and planes from the distance clipped its front.
    """
    depth = -float(view[2, :3] @ np.asarray(center, dtype=np.float64) + view[2, 3])
    r = max(radius, 1e-9)
    far = max((depth + r) * 1.01, 1e-6)
    near = max((depth - r) * 0.99, far * 1e-5)
    return near, far


def bilinear_repeat(tex_lin: NDArray[np.float32], uv: NDArray[np.floating]) -> NDArray[np.float32]:
    """Sample a (H, W, C) texture at (N, 2) glTF uv (v down) bilinearly with repeat wrapping, like GL_REPEAT
    + GL_LINEAR (texel centres at half-integers)."""
    h, w = tex_lin.shape[:2]
    x = np.asarray(uv[:, 0], dtype=np.float64) * w - 0.5
    y = np.asarray(uv[:, 1], dtype=np.float64) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    x1i, y1i = (x0i + 1) % w, (y0i + 1) % h
    x0i, y0i = x0i % w, y0i % h
    top = tex_lin[y0i, x0i] * (1 - fx) + tex_lin[y0i, x1i] * fx
    bot = tex_lin[y1i, x0i] * (1 - fx) + tex_lin[y1i, x1i] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)
