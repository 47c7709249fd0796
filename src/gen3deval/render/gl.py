"""The offscreen OpenGL renderer: moderngl on a headless EGL context (Mesa llvmpipe on CPU, the vendor
driver on a GPU).

One context per :class:`GLRenderer`, created once and reused for every mesh and view; framebuffers are
re-created only when the image size changes. A mesh is uploaded once per ``render`` call (indexed, faces
sorted by material, one draw per material) and drawn for every camera.

How the passes are made (kept cheap because llvmpipe pays per vertex, per interpolated value and,
above all, per fragment: it shades 4x4-pixel blocks, most of them only partly covered by triangles of a
few pixels, so each fragment-shader instruction runs many times per visible pixel):

- Flat shading, computed once per face in the vertex shader: each face gets a vertex of its own as its
  provoking (last) vertex (:func:`provoking_layout`; about 2 x the vertices on a closed mesh), carrying
  its exact unit normal (float64 cross product on the CPU). The vertex shader turns it towards the camera
  (double-sided lighting; generated meshes often have inconsistent winding), lights it and, for a
  constant albedo, encodes the final 8-bit sRGB colour; one flat vec4 carries these to the fragments
  (normal + light factor or packed colour), so the fragment shader only writes them (textures and vertex
  colours are still multiplied and encoded per fragment). The same normal is written to the normal pass.
- Depth is the camera-space z-depth (distance along -Z) in world units, computed per fragment from the
  interpolated world position (exact for planar triangles), not read back from the depth buffer.
- The projection flips Y so that memory row 0 is the top of the image (no CPU flip).
- Faces turned away from the camera are culled only where no pixel can change: meshes whose every part
  is closed and consistently oriented (checked once per mesh), seen from outside their bounding box.
  That halves llvmpipe's triangle work on closed meshes; open or badly wound meshes draw both sides.
  The faces clearly turned away are also left out of each view's index buffer (:meth:`GLRenderer._facing`)
  so that llvmpipe does not transform and set them up on the calling thread only to cull them.
- ``samples`` <= 1 (no anti-aliasing): one pass into RGBA8 (sRGB, already composited; alpha 0/1) and
  RGBA32F (normal, depth), each cleared to its own background value through a colour mask (background
  colour / zero normal and ``inf`` depth).
- ``samples`` > 1 (MSAA): the geometry pass writes premultiplied linear colour with coverage and
  (normal, depth) per sample; a full-screen resolve pass averages the samples, composites over the
  background in linear light, encodes sRGB, and divides depth and normal by the coverage (mean over
  the covered samples). Alpha is then fractional on edges.
- ``passes="color"`` (what image metrics need): the same programs compiled without the normal/depth
  output and its interpolated position, drawn into RGBA8 only (and with MSAA resolved into RGBA8 +
  alpha): the same fragments pass the same depth test and get the same colour, so RGB and alpha are
  bit-identical to ``passes="all"``, without writing or reading back 16 bytes per pixel of float32.
- Pipelining: every view of a ``render`` call (up to ``MAX_IN_FLIGHT`` within ``TARGET_BUDGET`` bytes)
  is drawn into its own read-back targets before any is read, so that llvmpipe rasterises one view on
  its worker threads while this thread transforms and bins the next; the read-backs then come in one
  batch into one block per pass (a read waits for all queued work anyway). The blocks are reused by
  later calls once the caller has dropped the views made from them (:class:`_BlockPool`): reading into
  fresh memory costs as much again in page faults.

Shading model and lights: :mod:`gen3deval.render.shading`.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import RenderError
from gen3deval.mesh.types import Mesh
from gen3deval.render.cameras import Camera
from gen3deval.render.shading import (
    AMBIENT,
    BACKGROUNDS,
    GREY_SRGB,
    Prepared,
    check_options,
    closed_orientation,
    depth_range,
    face_cross,
    light_dirs,
    light_intensities,
    prepare,
    srgb_to_linear,
    unit_normals,
)
from gen3deval.render.view import View, check_passes

GL_SRGB8_ALPHA8 = 0x8C43
DEFAULT_SAMPLES = 0
CULL_MIN_FACES = 10_000  # below this, rasterising is cheap and the closed-mesh check is not worth it
MAX_IN_FLIGHT = 8  # views drawn before reading back (one rig), ...
TARGET_BUDGET = 64 << 20  # ... within this many bytes of read-back targets

_INSTALL_HINT = (
    "install the EGL and Mesa libraries (Debian/Ubuntu: apt-get install libegl1 libgl1 libgl1-mesa-dri)"
)

# Linear -> sRGB encoding (IEC 61966-2-1, as shading.linear_to_srgb), shared by the shaders below.
_TO_SRGB = """vec3 to_srgb(vec3 c) {
    c = clamp(c, 0.0, 1.0);
    return mix(c * 12.92, 1.055 * pow(c, vec3(1.0 / 2.4)) - 0.055, step(vec3(0.0031308), c));
}
"""

_GEOM_VS = (
    """
#version 330
in vec3 in_pos;
in vec3 in_fn;           // unit normal of the face whose provoking (last) vertex this is, else unused
uniform mat4 u_mvp;
uniform vec3 u_eye;      // camera position, world
uniform vec3 u_light[K]; // light directions rotated to world space for this camera
uniform vec3 u_base;     // linear albedo of the material (or the grey)
// Few outputs: llvmpipe's per-vertex and per-triangle cost grows with each vec4 slot.
#ifndef COLOR_ONLY
out vec3 v_p;            // world position, for the depth (not needed for colour-only renders)
#endif
// The face's values in one slot: xyz its normal, turned towards the eye; w its light factor, or (flat
// colour without MSAA) its final 8-bit sRGB colour packed as r + 256 g + 65536 b (exact in a float).
flat out vec4 v_f;
#ifdef HAS_VCOL
in vec3 in_col;
out vec3 v_col;
#endif
#ifdef HAS_TEX
in vec2 in_uv;
out vec2 v_uv;
#endif
"""
    + _TO_SRGB
    + """void main() {
    gl_Position = u_mvp * vec4(in_pos, 1.0);
#ifndef COLOR_ONLY
    v_p = in_pos;
#endif
    // Flat shading: everything that depends on the face only is computed here, once per face (the
    // provoking vertex), not per fragment. Double-sided: the normal is turned towards the eye (a
    // degenerate face, which covers no pixel, gets the eye direction).
    vec3 to_eye = u_eye - in_pos;
    vec3 n = dot(in_fn, in_fn) > 0.0 ? in_fn : normalize(to_eye);
    if (dot(n, to_eye) < 0.0) n = -n;
    float s = min(AMBIENT SHADE_TERMS, 1.0);
#if defined(HAS_VCOL) || defined(HAS_TEX) || defined(MSAA)
    v_f = vec4(n, s);
#else
    // Rounded to 8 bits as the colour attachment would round it (to nearest).
    vec3 q = roundEven(to_srgb(u_base * s) * 255.0);
    v_f = vec4(n, dot(q, vec3(1.0, 256.0, 65536.0)));
#endif
#ifdef HAS_VCOL
    v_col = in_col;
#endif
#ifdef HAS_TEX
    v_uv = in_uv;
#endif
}
"""
)

_GEOM_FS = (
    """
#version 330
#ifndef COLOR_ONLY
in vec3 v_p;
uniform vec4 u_zrow;     // third row of the world->camera matrix: z_cam = dot(u_zrow.xyz, p) + u_zrow.w
layout(location = 1) out vec4 o_nz;
#endif
flat in vec4 v_f;
#ifdef HAS_VCOL
in vec3 v_col;
#endif
#ifdef HAS_TEX
in vec2 v_uv;
uniform sampler2D u_tex;
#endif
uniform vec3 u_base;     // linear albedo of the material (or the grey)
layout(location = 0) out vec4 o_col;
"""
    + _TO_SRGB
    + """void main() {
#if defined(HAS_VCOL) || defined(HAS_TEX)
    vec3 albedo = u_base;
#ifdef HAS_VCOL
    albedo *= v_col;
#endif
#ifdef HAS_TEX
    albedo *= texture(u_tex, v_uv).rgb;
#endif
#ifdef MSAA
    o_col = vec4(albedo * v_f.w, 1.0);
#else
    o_col = vec4(to_srgb(albedo * v_f.w), 1.0);
#endif
#elif defined(MSAA)
    o_col = vec4(u_base * v_f.w, 1.0);
#else
    // Unpack r + 256 g + 65536 b: integers below 2^24, so every step is exact in float32.
    float b = floor(v_f.w * (1.0 / 65536.0));
    float rg = v_f.w - b * 65536.0;
    float g = floor(rg * (1.0 / 256.0));
    o_col = vec4(vec3(rg - g * 256.0, g, b) * (1.0 / 255.0), 1.0);
#endif
#ifndef COLOR_ONLY
    // z-depth (camera-space distance along -Z) from the interpolated position: exact for planar faces.
    o_nz = vec4(v_f.xyz, -(dot(u_zrow.xyz, v_p) + u_zrow.w));
#endif
}
"""
)

_RESOLVE_VS = """
#version 330
void main() {
    // One triangle covering the viewport.
    vec2 p = vec2((gl_VertexID << 1) & 2, gl_VertexID & 2);
    gl_Position = vec4(p * 2.0 - 1.0, 0.0, 1.0);
}
"""

_RESOLVE_FS = (
    """
#version 330
uniform sampler2DMS u_col;
uniform float u_bg;
layout(location = 0) out vec4 o_rgb;
#ifdef COLOR_ONLY
layout(location = 1) out float o_alpha;
#else
uniform sampler2DMS u_nz;
layout(location = 1) out vec4 o_nz;
layout(location = 2) out float o_alpha;
#endif
"""
    + _TO_SRGB
    + """void main() {
    ivec2 p = ivec2(gl_FragCoord.xy);
    vec4 c = vec4(0.0);
    vec4 nz = vec4(0.0);
    for (int i = 0; i < SAMPLES; ++i) {
        c += texelFetch(u_col, p, i);
#ifndef COLOR_ONLY
        nz += texelFetch(u_nz, p, i);
#endif
    }
    if (c.a <= 0.0) {
        o_rgb = vec4(vec3(u_bg), 0.0);  // exactly the background: 255 or 0
#ifndef COLOR_ONLY
        o_nz = vec4(0.0, 0.0, 0.0, uintBitsToFloat(0x7F800000u));
#endif
        o_alpha = 0.0;
        return;
    }
    float a = c.a / float(SAMPLES);
    vec3 lin = c.rgb / float(SAMPLES) + (1.0 - a) * vec3(u_bg);  // premultiplied colour over the background
    o_rgb = vec4(to_srgb(lin), 1.0);
#ifndef COLOR_ONLY
    float len_n = length(nz.xyz);
    o_nz = vec4(len_n > 0.0 ? nz.xyz / len_n : vec3(0.0), nz.w / c.a);
#endif
    o_alpha = a;
}
"""
)


def _explain_context_error(exc: BaseException) -> str:
    """A message naming the system library that is missing, from glcontext's exception text."""
    msg = str(exc)
    low = msg.lower()
    if "not loaded" in low:
        lib = msg.split(" not loaded")[0].strip()
        need = "libEGL.so.1" if "egl" in low else "libGL.so.1"
        return f"cannot load {lib or need} ({need} is needed): {_INSTALL_HINT}"
    if "device" in low or "egl" in low or "display" in low:
        return (
            f"libEGL.so.1 loaded but no EGL display/device could be opened ({msg}); on machines without a GPU "
            f"the Mesa drivers provide one: {_INSTALL_HINT}"
        )
    return f"cannot create a headless OpenGL 3.3 context ({type(exc).__name__}: {msg}): {_INSTALL_HINT}"


def create_context(**kwargs: Any) -> Any:
    """A standalone moderngl context on EGL (OpenGL >= 3.3), or :class:`RenderError` naming the missing
    library. ``kwargs`` go to glcontext's EGL backend (``libegl``, ``libgl``, ``device_index``)."""
    try:
        import moderngl
    except ImportError as exc:  # pragma: no cover - moderngl is a core dependency
        raise RenderError(f"moderngl is not installed ({exc}); pip install moderngl") from exc
    try:
        mgl: Any = moderngl  # its stub types ``backend`` wrongly
        return mgl.create_context(standalone=True, backend="egl", require=330, **kwargs)
    except Exception as exc:  # glcontext raises bare Exception
        raise RenderError(f"OpenGL renderer unavailable: {_explain_context_error(exc)}") from exc


def provoking_layout(
    faces: NDArray[np.integer], n_vertices: int
) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """Give every face a vertex of its own in the last (provoking) position, so that per-face values can
    be passed as flat vertex attributes without a geometry shader.

    Args:
        faces: (F, 3) vertex indices.
        n_vertices: number of vertices V.

    Returns:
        (faces (F, 3) int32 into the new vertex list; src (V',) int64 original vertex of each new vertex,
        V <= V' <= V + F). Of the faces sharing a last vertex, one keeps it; the others get a copy of it
        (the corners and the winding stay as they are; on a closed mesh V' is about 2 V, i.e. about F).
    """
    nf = len(faces)
    out = np.array(faces, dtype=np.int32)
    last = out[:, 2].astype(np.int64)
    owner = np.full(n_vertices, -1, dtype=np.int64)
    idx = np.arange(nf)
    owner[last] = idx  # where faces share a last vertex, one write wins
    copies = np.flatnonzero(owner[last] != idx)
    out[copies, 2] = n_vertices + np.arange(len(copies), dtype=np.int32)
    src = np.concatenate([np.arange(n_vertices), last[copies]])
    return out, src


def _rows(a: NDArray[Any]) -> NDArray[Any]:
    """A contiguous (N, k) array seen as N opaque rows (numpy moves whole rows much faster this way)."""
    return a.view(np.dtype((np.void, a.itemsize * a.shape[1]))).reshape(-1)


def _gather_rows(a: NDArray[Any], idx: NDArray[np.integer]) -> NDArray[Any]:
    """``a[idx]`` for an (N, k) array, as a contiguous copy."""
    a = np.ascontiguousarray(a)
    return _rows(a)[idx].view(a.dtype).reshape(len(idx), a.shape[1])


class _Upload:
    """GL buffers of one mesh: faces sorted by material, each with its own provoking vertex carrying the
    face normal; positions and the optional vertex colours and uv copied to the new vertex list."""

    def __init__(
        self, ctx: Any, prep: Prepared, material: str, cross: NDArray[np.float64] | None = None
    ) -> None:
        """``cross``: :func:`face_cross` of the mesh's faces in their order, if already computed."""
        mesh = prep.mesh
        self.grey = material == "grey"
        self.has_vcol = not self.grey and prep.vcol is not None
        fm = np.asarray(mesh.face_material)
        if len(fm) and np.all(fm == fm[0]):
            faces = mesh.faces  # one material: no sorting
        else:
            order = np.argsort(fm, kind="stable")
            fm, faces = fm[order], mesh.faces[order]
            cross = None if cross is None else cross[:, order]
        self.objects: list[Any] = []
        self.content: list[tuple[Any, str, str]] = []  # the vertex array's buffers (set by the renderer)
        new_faces, src = provoking_layout(faces, len(mesh.vertices))
        fn = np.zeros((len(src), 3), dtype=np.float32)
        unit = unit_normals(face_cross(mesh.vertices, faces) if cross is None else cross)
        _rows(fn)[new_faces[:, 2]] = _rows(unit)
        self.faces = new_faces  # (F, 3) int32, in drawing order
        self._unit, self._v0 = unit, (mesh.vertices, faces[:, 0])
        self._planes: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
        self.pos = self._buf(ctx, _gather_rows(mesh.vertices.astype(np.float32), src))
        self.fn = self._buf(ctx, fn)
        self.col = (
            self._buf(ctx, _gather_rows(prep.vcol, src)) if self.has_vcol and prep.vcol is not None else None
        )
        has_uv = not self.grey and prep.uv is not None and prep.textures
        self.uv = self._buf(ctx, _gather_rows(prep.uv, src)) if has_uv and prep.uv is not None else None
        self.ibo = self._buf(ctx, new_faces)
        # Draw groups: (first index, index count, linear base colour, texture or None), and the range of
        # faces (first, end) of each.
        self.groups: list[tuple[int, int, tuple[float, float, float], Any]] = []
        self.face_ranges: list[tuple[int, int]] = []
        cuts = np.flatnonzero(np.diff(fm)) + 1
        starts = np.concatenate([[0], cuts]).astype(int)
        ends = np.concatenate([cuts, [len(fm)]]).astype(int)
        grey = tuple(float(x) for x in srgb_to_linear(np.full(3, GREY_SRGB)))
        for a, b in zip(starts, ends, strict=True):
            if b <= a:
                continue
            mat = int(fm[a])
            tex = None
            img = prep.textures.get(mat) if self.uv is not None else None
            if img is not None:
                h, w = img.shape[:2]
                tex = ctx.texture((w, h), 4, img.tobytes(), internal_format=GL_SRGB8_ALPHA8)
                tex.build_mipmaps()
                tex.repeat_x = tex.repeat_y = True
                self.objects.append(tex)
            base = grey if self.grey else tuple(float(x) for x in prep.base[mat])
            self.groups.append((3 * int(a), 3 * int(b - a), base, tex))  # type: ignore[arg-type]
            self.face_ranges.append((int(a), int(b)))

    def planes(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The faces' planes n . x = w, in drawing order: ((3, F) unit normals n, (F,) offsets w), float32
        (computed on first use: only meshes that are culled need them)."""
        if self._planes is None:
            n = np.ascontiguousarray(self._unit.T)
            vertices, corner = self._v0
            vt = np.ascontiguousarray(vertices.T)  # (3, V): contiguous rows gather fast
            w = np.zeros(len(corner))
            for i in range(3):
                w += n[i] * vt[i].take(corner)
            self._planes = (n, w.astype(np.float32))
        return self._planes

    def _buf(self, ctx: Any, arr: NDArray[Any]) -> Any:
        b = ctx.buffer(np.ascontiguousarray(arr))
        self.objects.append(b)
        return b

    def release(self) -> None:
        for obj in reversed(self.objects):
            obj.release()
        self.objects = []


_MASK_RGB = ((True,) * 4, (False,) * 4)
_MASK_NZ = ((False,) * 4, (True,) * 4)
_MASK_ALL = ((True,) * 4, (True,) * 4)


_Blocks = tuple[NDArray[np.uint8], NDArray[np.float32] | None, NDArray[np.float32]]


class _BlockPool:
    """Read-back memory, reused once nothing refers to it any more.

    A read-back into fresh memory costs about as much as the copy itself again: the kernel maps and
    zeroes every page on first touch. So the blocks (one per pass, for a batch of views) are kept and
    handed out again once no :class:`View` (nor any other array or buffer) refers to them, which CPython's
    reference counts tell exactly: every numpy view of a block keeps the block itself as its ``base``.
    A caller that keeps its views gets fresh blocks; at most ``keep`` sets are held.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._sets: list[_Blocks] = []

    def take(self, n: int, size: tuple[int, int], nz: bool = True) -> _Blocks:
        """(RGBA8 (n, H, W, 4), normal + depth (n, H, W, 4) float32, alpha (n, H, W) float32) blocks for
        ``n`` views of ``size`` (W, H), each free for the caller to overwrite. Without ``nz`` (colour-only
        renders) the normal + depth block may be None (a set that has one is still reused for colour)."""
        w, h = size
        need = (0, 1, 2) if nz else (0, 2)
        for i, blocks in enumerate(self._sets):
            if (
                blocks[2].shape == (n, h, w)
                and (blocks[1] is not None or not nz)
                and all(_refs(blocks, k) <= _FREE_REFS for k in need)
            ):
                self._sets.append(self._sets.pop(i))  # most recently used last
                return blocks
        new = (
            np.empty((n, h, w, 4), dtype=np.uint8),
            np.empty((n, h, w, 4), dtype=np.float32) if nz else None,
            np.empty((n, h, w), dtype=np.float32),
        )
        self._sets.append(new)
        if len(self._sets) > self.keep:
            self._sets.pop(0)  # the least recently used (its holders, if any, keep it alive)
        return new

    def clear(self) -> None:
        self._sets = []


def _refs(items: tuple[Any, ...], k: int) -> int:
    """Reference count of ``items[k]`` as seen from here."""
    return sys.getrefcount(items[k])


# What _refs counts for an object that only its tuple refers to (measured, not assumed: the count that
# the interpreter reports for temporaries differs between Python versions).
_FREE_REFS = _refs((object(),), 0)


class GLRenderer:
    """Headless rasteriser.

    Args:
        width, height: initial framebuffer size; each camera's own size is used (re-allocating on change).
        samples: MSAA samples per pixel (0 or 1: no anti-aliasing, the default, which keeps alpha binary
            and depth/normals exact at pixel centres).
        cull: ``auto`` culls faces turned away from the camera when that cannot change the image (closed,
            consistently oriented meshes of >= ``CULL_MIN_FACES`` faces seen from outside their box);
            ``never`` always draws both sides.
        context_kwargs: passed to glcontext's EGL backend (``libegl``, ``libgl``, ``device_index``).

    Memory: besides the context, up to ``MAX_IN_FLIGHT`` sets of read-back targets of the current size
    (20 bytes per pixel each, 24 with MSAA, 4 or 8 when only colour is ever rendered; within
    ``TARGET_BUDGET``), kept between calls: 40 MiB for
    the 8 views of a rig at 512 x 512; and up to two blocks of numpy memory of the same size that the
    returned views live in, reused by later calls once the caller has dropped those views.
    """

    def __init__(
        self,
        width: int = 512,
        height: int = 512,
        *,
        samples: int = DEFAULT_SAMPLES,
        cull: str = "auto",
        **context_kwargs: Any,
    ) -> None:
        if cull not in ("auto", "never"):
            raise ValueError(f"cull must be 'auto' or 'never', got {cull!r}")
        self.cull = cull
        self.ctx = create_context(**context_kwargs)
        self.samples = 1 if samples <= 1 else min(int(samples), int(self.ctx.max_samples))
        self.info: dict[str, str] = {
            "renderer": "gl",
            "gl_renderer": str(self.ctx.info.get("GL_RENDERER", "")),
            "gl_version": str(self.ctx.info.get("GL_VERSION", "")),
            "gl_vendor": str(self.ctx.info.get("GL_VENDOR", "")),
            "samples": str(self.samples),
        }
        self._programs: dict[tuple[bool, bool, bool], Any] = {}
        self._light_dirs = light_dirs()
        # Bound for the materials without a texture when the mesh's program samples one.
        self._white = self.ctx.texture((1, 1), 4, bytes([255, 255, 255, 255]))
        self._resolves: dict[bool, tuple[Any, Any]] = {}  # color_only -> (resolve program, its quad)
        self._size: tuple[int, int] | None = None
        self._shared: dict[str, Any] = {}
        self._targets: list[dict[str, Any]] = []
        self._blocks = _BlockPool()
        self._resize(int(width), int(height))

    @property
    def size(self) -> tuple[int, int]:
        """Current framebuffer (width, height)."""
        assert self._size is not None
        return self._size

    def _program(self, has_vcol: bool, has_tex: bool, color_only: bool = False) -> Any:
        """The geometry program for a mesh's attributes; ``color_only`` writes only the colour target."""
        key = (has_vcol, has_tex, color_only)
        if key not in self._programs:
            k = len(self._light_dirs)
            # Constants baked into the source (an unrolled sum is cheaper on llvmpipe than a uniform loop).
            terms = "".join(
                f" + {i:.9g} * max(dot(n, u_light[{j}]), 0.0)" for j, i in enumerate(light_intensities())
            )
            defs = (
                f"#version 330\n#define K {k}\n#define AMBIENT {AMBIENT:.9g}\n#define SHADE_TERMS {terms}\n"
            )
            defs += "#define HAS_VCOL\n" * has_vcol + "#define HAS_TEX\n" * has_tex
            defs += "#define MSAA\n" * (self.samples > 1) + "#define COLOR_ONLY\n" * color_only
            prog = self.ctx.program(
                vertex_shader=defs + _GEOM_VS.split("\n", 2)[2],
                fragment_shader=defs + _GEOM_FS.split("\n", 2)[2],
            )
            if has_tex:
                prog["u_tex"] = 0
            self._programs[key] = prog
        return self._programs[key]

    def _resolve(self, color_only: bool) -> tuple[Any, Any]:
        """The MSAA resolve program for all passes or colour and alpha only, and its full-screen quad."""
        if color_only not in self._resolves:
            defs = f"#version 330\n#define SAMPLES {self.samples}\n" + "#define COLOR_ONLY\n" * color_only
            prog = self.ctx.program(
                vertex_shader=_RESOLVE_VS, fragment_shader=defs + _RESOLVE_FS.split("\n", 2)[2]
            )
            prog["u_col"] = 0
            if not color_only:
                prog["u_nz"] = 1
            self._resolves[color_only] = (prog, self.ctx.vertex_array(prog, []))
        return self._resolves[color_only]

    def _resize(self, width: int, height: int) -> None:
        """Make the image size (width, height): drop the targets of another size (re-created lazily)."""
        if self._size == (width, height):
            return
        self._release_targets()
        ctx, size = self.ctx, (width, height)
        # Shared by every view in flight (scenes run in order): the depth buffer, and with MSAA the
        # multisampled geometry targets, since only the resolved images are read back.
        if self.samples > 1:
            col = ctx.texture(size, 4, samples=self.samples, dtype="f2")
            dep = ctx.depth_renderbuffer(size, samples=self.samples)
            self._shared = {"col": col, "dep": dep}
        else:
            self._shared = {"dep": ctx.depth_renderbuffer(size)}
        self._size = size

    def _geom(self, color_only: bool) -> Any:
        """MSAA: the multisampled framebuffer drawn into, with or without the (normal, depth) target
        (created on first use, so that colour-only rendering never allocates it)."""
        key = "geom_c" if color_only else "geom"
        sh = self._shared
        if key not in sh:
            if color_only:
                sh[key] = self.ctx.framebuffer([sh["col"]], sh["dep"])
            else:
                sh["nz"] = self.ctx.texture(self.size, 4, samples=self.samples, dtype="f4")
                sh[key] = self.ctx.framebuffer([sh["col"], sh["nz"]], sh["dep"])
        return sh[key]

    def _target(self, i: int, color_only: bool = False) -> dict[str, Any]:
        """The i-th set of read-back targets (created on first use): one per view in flight. Its
        framebuffer ``out`` has the attachments (rgb, nz[, a]); ``out_c`` only (rgb[, a]), sharing them."""
        while len(self._targets) <= i:
            self._targets.append({})
        t = self._targets[i]
        key = "out_c" if color_only else "out"
        if key not in t:
            ctx, size, dep = self.ctx, self.size, self._shared["dep"]
            msaa = self.samples > 1
            if "rgb" not in t:
                t["rgb"] = ctx.renderbuffer(size, 4, dtype="f1")
            if msaa and "a" not in t:
                t["a"] = ctx.renderbuffer(size, 1, dtype="f4")
            att = [t["rgb"]]
            if not color_only:
                t["nz"] = ctx.renderbuffer(size, 4, dtype="f4")
                att.append(t["nz"])
            if msaa:
                # The resolve pass writes these; no depth test.
                t[key] = ctx.framebuffer([*att, t["a"]])
            else:
                t[key] = ctx.framebuffer(att, dep)
        return t

    def _max_in_flight(self, color_only: bool = False) -> int:
        """Views drawn before the first is read back: as many as fit in ``TARGET_BUDGET`` bytes."""
        w, h = self.size
        per_view = (
            w * h * ((8 if self.samples > 1 else 4) if color_only else (24 if self.samples > 1 else 20))
        )
        return max(1, min(MAX_IN_FLIGHT, TARGET_BUDGET // per_view))

    def _release_targets(self) -> None:
        for t in self._targets:
            for obj in t.values():
                obj.release()
        for obj in self._shared.values():
            obj.release()
        self._targets, self._shared = [], {}

    def render(
        self,
        mesh: Mesh | Prepared,
        cameras: list[Camera],
        *,
        material: str = "asset",
        background: str = "white",
        normalize: bool = True,
        passes: str = "all",
    ) -> list[View]:
        """Render ``mesh`` from each camera (bbox-normalised first when ``normalize``); one View per camera.

        ``passes``: ``all`` (colour, alpha, depth, normals) or ``color`` (colour and alpha only, the same
        pixels: no normal/depth target is written or read back; the views' depth and normals are None).
        """
        check_options(material, background)
        check_passes(passes)
        prep = mesh if isinstance(mesh, Prepared) else prepare(mesh, normalize=normalize)
        # Make this context current for the call (and restore the previous one after): another renderer
        # or GL library in the process (a second GLRenderer, pyrender) may have made its own current.
        with self.ctx:
            return self._render(prep, cameras, material, background, passes == "color")

    def _render(
        self, prep: Prepared, cameras: list[Camera], material: str, background: str, color_only: bool = False
    ) -> list[View]:
        bg = BACKGROUNDS[background]
        cross = face_cross(prep.mesh.vertices, prep.mesh.faces) if prep.n_faces else None
        up = _Upload(self.ctx, prep, material, cross) if prep.n_faces else None
        # Culling faces that turn away from the camera halves llvmpipe's triangle work. It changes no
        # pixel only for closed, consistently oriented meshes seen from outside, so it is decided per
        # mesh (a ~0.3 us/face check, paid only where the saving per view is worth it) and per view.
        orient = 0
        if self.cull == "auto" and prep.n_faces >= CULL_MIN_FACES:
            orient = closed_orientation(prep.mesh, cross=cross)
        box = prep.box if orient else None
        try:
            vao = None
            if up is not None:
                prog = self._program(up.has_vcol, up.uv is not None, color_only)
                content = [(up.pos, "3f", "in_pos"), (up.fn, "3f", "in_fn")]
                if up.col is not None:
                    content.append((up.col, "3f", "in_col"))
                if up.uv is not None:
                    content.append((up.uv, "2f", "in_uv"))
                vao = self.ctx.vertex_array(prog, content, index_buffer=up.ibo, index_element_size=4)
                up.objects.append(vao)
                up.content = content
            # Draw every view into its own targets before reading any back: llvmpipe rasterises a view on
            # its worker threads while this thread prepares the next one (vertex processing, binning);
            # a read waits for all the work queued before it, so reads come last, in a batch.
            views: list[View] = []
            batch: list[Camera] = []
            for cam in cameras:
                size = (int(cam.width), int(cam.height))
                if size != self._size or len(batch) >= self._max_in_flight(color_only):
                    views += self._read(batch, background, color_only)
                    batch = []
                    self._resize(*size)
                self._draw(
                    self._target(len(batch), color_only), prep, up, vao, cam, bg, box, orient, color_only
                )
                batch.append(cam)
            views += self._read(batch, background, color_only)
            return views
        finally:
            if up is not None:
                up.release()

    def _draw(
        self,
        t: dict[str, Any],
        prep: Prepared,
        up: _Upload | None,
        vao: Any,
        cam: Camera,
        bg: float,
        box: NDArray[np.float64] | None = None,
        orient: int = 0,
        color_only: bool = False,
    ) -> None:
        """Queue the passes of one view into the targets ``t`` (read back later by :meth:`_read`)."""
        ctx = self.ctx
        msaa = self.samples > 1
        geom = self._geom(color_only) if msaa else t["out_c" if color_only else "out"]
        if msaa or color_only:
            # One attachment to clear (the MSAA geometry targets resolve to the background later).
            c = 0.0 if msaa else bg
            geom.clear(c, c, c, 0.0, depth=1.0)
        else:
            # Each attachment its own background value, in the framebuffer drawn into (one llvmpipe scene
            # per view: binding another framebuffer would close the scene).
            out = t["out"]
            out.color_mask = _MASK_RGB
            out.clear(bg, bg, bg, 0.0, depth=1.0)
            out.color_mask = _MASK_NZ
            out.clear(0.0, 0.0, 0.0, float("inf"))
            out.color_mask = _MASK_ALL
        geom.use()
        ctx.enable(ctx.DEPTH_TEST)
        ctx.disable(ctx.CULL_FACE)
        groups = up.groups if up is not None else []
        if orient and vao is not None and up is not None and box is not None:
            lo, hi = box
            margin = 1e-6 * float(np.max(hi - lo))
            pos = cam.position
            if np.any(pos < lo - margin) or np.any(pos > hi + margin):  # camera outside the mesh's box
                ctx.enable(ctx.CULL_FACE)
                # The Y-flipped projection mirrors window-space winding: outward (CCW) faces appear CW.
                ctx.front_face = "cw"
                ctx.cull_face = "back" if orient > 0 else "front"
                vao, groups = self._facing(up, vao, pos, orient, prep.radius)
        if vao is not None and up is not None:
            view_m = cam.view
            near, far = depth_range(view_m, prep.center, prep.radius)
            flip_y = np.diag([1.0, -1.0, 1.0, 1.0])  # memory row 0 = image top
            prog = vao.program
            prog["u_mvp"].write((flip_y @ cam.projection(near, far) @ view_m).T.astype("f4").tobytes())
            # Lights are fixed to the camera: rotate their camera-space directions to world space.
            prog["u_light"].write((self._light_dirs @ cam.c2w[:3, :3].T).astype("f4").tobytes())
            if not color_only:
                prog["u_zrow"] = tuple(float(x) for x in view_m[2])
            prog["u_eye"] = tuple(float(x) for x in cam.position)
            # Flat per-face values come from each face's last vertex (its own, see provoking_layout).
            ctx.provoking_vertex = ctx.LAST_VERTEX_CONVENTION
            for first, count, base, tex in groups:
                prog["u_base"] = base
                if up.uv is not None:
                    (tex if tex is not None else self._white).use(0)
                vao.render(mode=ctx.TRIANGLES, vertices=count, first=first)
        if msaa:
            resolve, quad = self._resolve(color_only)
            t["out_c" if color_only else "out"].use()
            ctx.disable(ctx.DEPTH_TEST)
            ctx.disable(ctx.CULL_FACE)
            self._shared["col"].use(0)
            if not color_only:
                self._shared["nz"].use(1)
            resolve["u_bg"] = bg
            quad.render(mode=ctx.TRIANGLES, vertices=3)

    def _facing(
        self, up: _Upload, vao: Any, eye: NDArray[np.float64], orient: int, radius: float
    ) -> tuple[Any, list[tuple[int, int, tuple[float, float, float], Any]]]:
        """A vertex array like ``vao`` (every face) and draw groups for only the faces that may face
        ``eye`` (the others are culled anyway, but llvmpipe would still transform and set up each of them
        on this thread).

        Only faces clearly turned away (the eye more than 1e-4 x ``radius`` behind their plane) are left
        out, so the rasteriser's own culling still decides every face it could draw: the image is the
        same, bit for bit, with half the triangles or fewer to process.
        """
        n, w = up.planes()
        e = eye.astype(np.float32)
        d = n[0] * e[0]  # signed distance of the eye from each face's plane
        d += n[1] * e[1]
        d += n[2] * e[2]
        d -= w
        if orient < 0:
            d = -d  # inward-facing mesh: its faces are drawn from their back
        keep = d > np.float32(-1e-4 * max(radius, 1e-9))
        ibo = self.ctx.buffer(_rows(up.faces)[keep])
        vao = self.ctx.vertex_array(vao.program, up.content, index_buffer=ibo, index_element_size=4)
        up.objects += [ibo, vao]  # released with the mesh's buffers, after the read-back
        groups = []
        first = 0
        for (a, b), (_, _, base, tex) in zip(up.face_ranges, up.groups, strict=True):
            kept = int(np.count_nonzero(keep[a:b]))
            groups.append((3 * first, 3 * kept, base, tex))
            first += kept
        return vao, groups

    def _read(self, cams: list[Camera], background: str, color_only: bool = False) -> list[View]:
        """Read back the views drawn into the first ``len(cams)`` targets (colour and alpha only, when
        ``color_only``: their depth and normals are None)."""
        if not cams:
            return []
        n = len(cams)
        rgba, nz_block, alpha = self._blocks.take(self._max_in_flight(color_only), self.size, not color_only)
        rgba, alpha = rgba[:n], alpha[:n]
        nz = None if color_only or nz_block is None else nz_block[:n]
        for i in range(n):
            fbo = self._targets[i]["out_c" if color_only else "out"]
            fbo.read_into(rgba[i], components=4, attachment=0, dtype="f1")
            if nz is not None:
                fbo.read_into(nz[i], components=4, attachment=1, dtype="f4")
            if self.samples > 1:
                fbo.read_into(alpha[i], components=1, attachment=1 if nz is None else 2, dtype="f4")
        if self.samples <= 1 and sys.byteorder == "little":
            # Without MSAA alpha is exactly 0 or 255 (the clear, or a fragment's 1.0): its top bit (the top
            # bit of the pixel as a little-endian uint32) times the bits of 1.0f gives the float32 0.0 or
            # 1.0 in two integer passes, 3x faster than a cast.
            bits = alpha.view(np.uint32)
            np.right_shift(rgba.view(np.uint32)[..., 0], 31, out=bits)
            bits *= np.uint32(0x3F800000)
        elif self.samples <= 1:
            np.multiply(rgba[..., 3], np.float32(1.0 / 255.0), out=alpha)
        # Strided views into the read-back blocks (no copies: they cost as much as the readback).
        return [
            View(
                rgb=rgba[i, :, :, :3],
                alpha=alpha[i],
                depth=None if nz is None else nz[i, :, :, 3],
                normals=None if nz is None else nz[i, :, :, :3],
                camera=cam,
                background=background,
            )
            for i, cam in enumerate(cams)
        ]

    def release(self) -> None:
        """Free the GL objects and the context."""
        with self.ctx:
            self._release_targets()
        self.ctx.release()
        self._blocks.clear()

    def __enter__(self) -> GLRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
