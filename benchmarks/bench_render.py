"""Rendering throughput: views/s at 512x512 for ~80k-face meshes, the GL renderer beside pyrender (and
the ray caster) on the same meshes and the same trellis8 views, in the same run.

What one "view" includes for gen3deval's GL renderer: the per-mesh work of a render call (bbox
normalisation, closed-mesh check, upload; shared by its 8 views), the draw, and the readback of RGB +
alpha + depth + normals into numpy. For pyrender: its colour + depth readback (it has no normal pass).
Mesh loading/subdivision is excluded.

The "raw moderngl ceiling" row (closed icosphere only) is what this GL stack costs with almost nothing
of ours: a trivial fragment shader (normal as colour, no lighting), the same vertices, cameras, back-face
culling by the rasteriser and the same two read-backs (RGBA8 + RGBA32F into fresh numpy arrays), no
per-mesh work. (Not a strict ceiling any more: the renderer leaves the faces turned away out of each
view's index buffer, which this loop does not.)

The renderers are timed in interleaved rounds (one render call of 8 views each per round) so that the
load from other jobs on a shared machine hits all of them alike; the table gives the median round and
the best one, and for the icosphere the median over rounds of each renderer's views/s divided by the raw
loop's in the same round: the host's own speed drifts by tens of percent within minutes, that ratio
much less.

Run:  PYOPENGL_PLATFORM=egl python benchmarks/bench_render.py [--rounds 7]
pyrender (a `bench` extra) must be importable; without it the table compares with the ray caster only
(the "x pyrender" columns are then relative to the ray caster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # pyrender headless; must precede its import

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _meshes next to this file

from _meshes import subdivided
from gen3deval.mesh.types import Mesh
from gen3deval.render import rig
from gen3deval.render.gl import GLRenderer
from gen3deval.render.raycast import RaycastRenderer

REPO = Path(__file__).resolve().parents[1]
LOWPOLY = Path(os.environ.get("GEN3DEVAL_SHARED_DATA", REPO.parent / "shared" / "data")) / "lowpoly304"


def icosphere_mesh() -> tuple[str, Mesh]:
    tm = trimesh.creation.icosphere(subdivisions=6, radius=0.5)
    return "icosphere (subdiv 6)", Mesh.from_arrays(tm.vertices, tm.faces, color=(0.8, 0.3, 0.2, 1.0))


def real_mesh(target_faces: int = 80_000) -> tuple[str, Mesh] | None:
    """The textured lowpoly304 object whose face count x 16 (two midpoint subdivisions) is nearest the
    target, subdivided with its uv (texture kept)."""
    from gen3deval.mesh.io import load_mesh

    manifest = LOWPOLY / "manifest.jsonl"
    if not manifest.exists():
        return None
    rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["id"].startswith("kaykit")]  # textured packs
    row = min(rows, key=lambda r: abs(16 * r["faces"] - target_faces))
    mesh = subdivided(load_mesh(LOWPOLY / row["path"]), 2, row["id"])
    return f"{row['id']} x16 (textured)", mesh


def cpu_wall(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds: all threads, llvmpipe rasterises on worker threads) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def gl_call(r: GLRenderer, mesh: Mesh, cams: list, material: str) -> Callable[[], None]:
    def call() -> None:
        views = r.render(mesh, cams, material=material)
        assert views[0].alpha.any()

    return call


class RawCeiling:
    """The raw moderngl floor on the closed icosphere: trivial fragment shader, same vertices (normalised
    like the renderer does), cameras, culling and read-backs; no lighting, no per-mesh work."""

    def __init__(self, mesh: Mesh, cams: list) -> None:
        import moderngl

        from gen3deval.mesh.normalize import normalize

        mgl: Any = moderngl  # its stub types ``backend`` wrongly
        self.moderngl = mgl
        norm, _ = normalize(mesh, "bbox")
        self.ctx = mgl.create_context(standalone=True, backend="egl")
        ctx = self.ctx
        self.prog: Any = ctx.program(
            vertex_shader="""#version 330
in vec3 in_pos; uniform mat4 mvp; out vec3 p;
void main() { gl_Position = mvp * vec4(in_pos, 1.0); p = in_pos; }""",
            fragment_shader="""#version 330
in vec3 p; layout(location = 0) out vec4 c; layout(location = 1) out vec4 nz;
void main() { vec3 n = normalize(cross(dFdx(p), dFdy(p))); c = vec4(n * 0.5 + 0.5, 1.0); nz = vec4(n, p.z); }""",
        )
        vbo = ctx.buffer(norm.vertices.astype("f4"))
        ibo = ctx.buffer(norm.faces.astype("i4"))
        self.vao = ctx.vertex_array(self.prog, [(vbo, "3f", "in_pos")], ibo, index_element_size=4)
        size = (cams[0].width, cams[0].height)
        rgb, nz = ctx.renderbuffer(size, 4), ctx.renderbuffer(size, 4, dtype="f4")
        self.fbo = ctx.framebuffer([rgb, nz], ctx.depth_renderbuffer(size))
        flip_y = np.diag([1.0, -1.0, 1.0, 1.0])
        self.mvps = [(flip_y @ c.projection(1.0, 3.0) @ c.view).T.astype("f4").tobytes() for c in cams]
        self.size = size

    def __call__(self) -> None:
        mgl, ctx = self.moderngl, self.ctx
        w, h = self.size
        with ctx:
            self.fbo.use()
            ctx.enable(mgl.DEPTH_TEST | mgl.CULL_FACE)
            ctx.front_face = "cw"  # the Y-flipped projection mirrors the winding
            for mvp in self.mvps:
                self.prog["mvp"].write(mvp)
                self.fbo.clear(1.0, 1.0, 1.0, 1.0)
                self.vao.render()
                rgba, nz = np.empty((h, w, 4), np.uint8), np.empty((h, w, 4), np.float32)
                self.fbo.read_into(rgba, components=4, attachment=0)
                self.fbo.read_into(nz, components=4, attachment=1, dtype="f4")

    def release(self) -> None:
        self.ctx.release()


def raycast_call(mesh: Mesh, cams: list) -> Callable[[], None]:
    rc = RaycastRenderer()

    def call() -> None:
        assert rc.render(mesh, cams)[0].alpha.any()

    return call


def pyrender_renderer():
    try:
        import pyrender

        return pyrender, pyrender.OffscreenRenderer(512, 512)
    except Exception as exc:  # missing package or no EGL through PyOpenGL
        print(f"pyrender unavailable ({type(exc).__name__}: {exc}); comparing with the ray caster only")
        return None, None


def pyrender_call(pyrender, renderer, mesh: Mesh, cams: list) -> Callable[[], None]:
    """Same normalised geometry (and texture), flat shading, a camera-attached directional light; each
    call builds the scene once (the upload) and renders every camera, reading colour and depth."""
    from gen3deval.mesh.normalize import normalize

    norm, _ = normalize(mesh, "bbox")
    tm = trimesh.Trimesh(norm.vertices, norm.faces, process=False)
    tex = norm.materials[0].texture
    if norm.uv is not None and tex is not None:
        from PIL import Image

        uv = norm.uv.copy()
        uv[:, 1] = 1.0 - uv[:, 1]  # trimesh's v up
        mat = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(tex))
        tm.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)

    def one_call() -> None:
        scene = pyrender.Scene(ambient_light=(0.3, 0.3, 0.3))
        scene.add(pyrender.Mesh.from_trimesh(tm, smooth=False))
        cam_node = scene.add(pyrender.PerspectiveCamera(yfov=np.radians(cams[0].fov_deg)))
        light = scene.add(pyrender.DirectionalLight(intensity=3.0))
        for c in cams:
            scene.set_pose(cam_node, c.c2w)
            scene.set_pose(light, c.c2w)
            _color, depth = renderer.render(scene)
            assert (depth > 0).any()

    return one_call


def interleaved(
    calls: dict[str, Callable[[], None]], rounds: int, n_views: int
) -> dict[str, list[tuple[float, float]]]:
    """Per renderer, (views/s, CPU ms/view) of each round; every round runs each renderer once."""
    for fn in calls.values():
        fn()  # warm-up: shader compile, framebuffers
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            wall, cpu = cpu_wall(fn)
            out[k].append((n_views / wall, 1000.0 * cpu / n_views))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (one 8-view call per renderer)")
    args = ap.parse_args()
    cams = rig("trellis8")  # 512x512
    meshes = [icosphere_mesh()]
    real = real_mesh()
    if real is not None:
        meshes.append(real)
    gl = GLRenderer(512, 512)
    gl4 = GLRenderer(512, 512, samples=4)
    gl_nocull = GLRenderer(512, 512, cull="never")
    pyrender, pr = pyrender_renderer()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}"
    )
    print(f"GL: {gl.info['gl_renderer']} / {gl.info['gl_version']}\n")
    print(
        "| mesh | faces | renderer | views/s (median) | views/s (best) | x pyrender | CPU ms/view | x pyrender (CPU) "
        "| x raw ceiling (per round) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for i, (name, mesh) in enumerate(meshes):
        material = "asset"
        calls: dict[str, Callable[[], None]] = {}
        raw = RawCeiling(mesh, cams) if i == 0 else None  # closed mesh: culling is exact there
        if raw is not None:
            calls["raw moderngl ceiling (trivial shader, culled)"] = raw
        calls["gen3deval GL (default: no MSAA)"] = gl_call(gl, mesh, cams, material)
        calls["gen3deval GL (4x MSAA)"] = gl_call(gl4, mesh, cams, material)
        calls["gen3deval GL, no face culling"] = gl_call(gl_nocull, mesh, cams, material)
        ref_label = "gen3deval raycast (Embree)"
        if pyrender is not None:
            ref_label = "pyrender 0.1.45 (colour + depth)"
            calls[ref_label] = pyrender_call(pyrender, pr, mesh, cams)
        res = interleaved(calls, args.rounds, len(cams))
        rc_vps, rc_cpu = interleaved({"rc": raycast_call(mesh, cams[:2])}, 1, 2)["rc"][0]
        res["gen3deval raycast (Embree)"] = [(rc_vps, rc_cpu)]  # one call: it is slow
        ref_vps = float(np.median([r[0] for r in res[ref_label]]))
        ref_cpu = float(np.median([r[1] for r in res[ref_label]]))
        raw_label = "raw moderngl ceiling (trivial shader, culled)"
        for label, rows in res.items():
            vps = float(np.median([r[0] for r in rows]))
            best = max(r[0] for r in rows)
            cpu = float(np.median([r[1] for r in rows]))
            # The host's speed drifts by tens of percent within minutes; the ratio to the raw ceiling
            # timed in the same round (median over rounds) does not.
            vs_raw = "-"
            if raw_label in res and label != raw_label and len(rows) == len(res[raw_label]):
                vs_raw = f"{np.median([r[0] / q[0] for r, q in zip(rows, res[raw_label], strict=True)]):.2f}"
            print(
                f"| {name} | {mesh.n_faces} | {label} | {vps:.1f} | {best:.1f} | {vps / ref_vps:.2f} |"
                f" {cpu:.0f} | {ref_cpu / cpu:.2f} | {vs_raw} |"
            )
        if raw is not None:
            raw.release()
    print(f"\nload average after: {os.getloadavg()}")
    gl.release()
    gl4.release()
    gl_nocull.release()
    if pr is not None:
        pr.delete()


if __name__ == "__main__":
    main()
