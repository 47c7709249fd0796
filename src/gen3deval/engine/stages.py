"""The pipeline stages as pure functions: JSON-able values and file paths in, a :class:`StageResult` out.

Stages never touch the store; the engine decides what runs, hands each stage a fresh scratch folder
(``workdir``) and turns the files a stage returns into content-addressed artifacts. Paths given to a stage
are absolute. Stages run in worker processes (in-process only when the engine runs ``inline``), so the
heavy state they need (a GL renderer, system objects) is created lazily in each worker.

Stages and their outputs (``files`` names -> artifact names in the store):

- ``reference(case, protocol)``: load (or execute) the reference, store it as a canonical GLB
  (``mesh``), render it with the protocol's rig (``renders``, RGBA PNG) and provide the reference image
  (``image``: the case's input image, or a render with ``ref_rig`` when the case has none).
- ``generate(case, system, reference_mesh, ref_image, attempt)``: the system's candidate for ``attempt``
  (1-based): a mesh file (validated, kept as GLB: ``mesh``) or a program (``program``).
- ``execute(program, language, limits)``: run a program in the sandbox -> ``mesh`` (programs only).
- ``render(mesh, protocol)``: candidate views with the protocol's rig (``renders``).
- ``score(candidate_mesh, reference_mesh, candidate_renders, reference_renders, protocol, ...)``: the metrics
  (:mod:`gen3deval.engine.scoring`).

Failures are values too: ``StageResult(status="failed", error_class=..., error=...)``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gen3deval.errors import DependencyError, MeshLoadError

# Error classes for failures that are not a program's (the contract of result rows).
MISSING_OUTPUT = "missing_output"
LOAD_ERROR = "load_error"
GENERATION_ERROR = "generation_error"
REFERENCE_ERROR = "reference_error"


@dataclass
class StageResult:
    """What a stage returns.

    Attributes:
        status: ``done`` or ``failed``.
        value: JSON-able output (metrics, timings, candidate kind, executor diagnostics).
        files: {name: path or [paths]} of files to keep as artifacts (usually inside ``workdir``; files
            outside it are copied, never moved).
        error_class / error: why it failed (``error`` is one short line plus detail, trimmed).
    """

    status: str = "done"
    value: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str | list[str]] = field(default_factory=dict)
    error_class: str | None = None
    error: str | None = None

    @staticmethod
    def fail(error_class: str, error: str, **value: Any) -> StageResult:
        return StageResult(status="failed", value=dict(value), error_class=error_class, error=_short(error))


def _short(msg: str, limit: int = 600) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# --- per-process state ----------------------------------------------------------------------------------------

_RENDERERS: dict[int, Any] = {}
_SYSTEMS: dict[str, Any] = {}
# The render backend of this process: "auto" until the engine pins the one its fingerprint recorded, so a
# worker that cannot get the same renderer fails its renders instead of silently rendering differently.
RENDER_BACKEND = "auto"


def set_render_backend(backend: str) -> None:
    """Pin the backend of :func:`get_renderer` (``auto``, ``gl`` or ``raycast``) for this process."""
    global RENDER_BACKEND
    if backend != RENDER_BACKEND:
        RENDER_BACKEND = backend
        _RENDERERS.clear()


def get_renderer(size: int) -> Any:
    """One renderer per process and size (GL contexts are created in the worker that uses them)."""
    if size not in _RENDERERS:
        from gen3deval.render import Renderer

        _RENDERERS[size] = Renderer(size, backend=RENDER_BACKEND)
    return _RENDERERS[size]


def renderer_description(size: int) -> dict[str, str]:
    """What rendered: backend and GL renderer strings (kept with every render, to spot a mixed run)."""
    return dict(getattr(get_renderer(size), "info", {}) or {})


def get_system(spec: dict[str, Any]) -> Any:
    """The system object of a SystemSpec dict, created once per process."""
    import json

    key = json.dumps(spec, sort_keys=True)
    if key not in _SYSTEMS:
        from gen3deval.systems.base import create_system

        _SYSTEMS[key] = create_system(
            spec["name"], spec.get("settings") or {}, base_dir=spec.get("base_dir", ".")
        )
    return _SYSTEMS[key]


# --- helpers --------------------------------------------------------------------------------------------------


def case_from_dict(d: dict[str, Any]) -> Any:
    from gen3deval.suites.base import Case

    names = {f.name for f in dataclasses.fields(Case)}
    return Case(**{k: v for k, v in d.items() if k in names})


def canonical_mesh_file(path: str | Path, up: str, workdir: Path, name: str) -> tuple[str, Any]:
    """Validate a mesh file and return (path to keep, Mesh).

    A GLB in +Y up is kept byte for byte (it is self-contained); any other file (glTF with side files,
    OBJ/PLY/STL/OFF, or a +Z-up file) is loaded into the canonical frame and written as a GLB.
    """
    from gen3deval.mesh.io import load_mesh, save_mesh

    p = Path(path)
    mesh = load_mesh(p, up=up)
    if p.suffix.lower() == ".glb" and up == "y":
        return str(p), mesh
    out = save_mesh(mesh, workdir / f"{name}.glb")
    return str(out), mesh


def write_views_png(views: list[Any], workdir: Path, prefix: str) -> list[str]:
    """Write views as RGBA PNGs (RGB as rendered, i.e. composited over the background; A = coverage)."""
    from PIL import Image

    paths = []
    for i, v in enumerate(views):
        a = np.clip(np.rint(np.asarray(v.alpha, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        rgba = np.dstack([np.asarray(v.rgb, dtype=np.uint8), a])
        p = workdir / f"{prefix}_{i:02d}.png"
        # Level 1: half the encode time of level 6 for ~30% larger files (renders are written once per view).
        Image.fromarray(rgba, mode="RGBA").save(p, optimize=False, compress_level=1)
        paths.append(str(p))
    return paths


def read_views_png(paths: list[str], rig_name: str, size: int, background: str) -> list[Any]:
    """Views back from :func:`write_views_png` (depth and normals are not stored: None)."""
    from PIL import Image

    from gen3deval.render import rig
    from gen3deval.render.view import View

    cams = rig(rig_name, size)
    if len(cams) != len(paths):
        raise ValueError(f"rig {rig_name} has {len(cams)} views but {len(paths)} renders were stored")
    views = []
    for cam, p in zip(cams, paths, strict=True):
        rgba = np.asarray(Image.open(p).convert("RGBA"))
        views.append(
            View(
                rgb=np.ascontiguousarray(rgba[:, :, :3]),
                alpha=rgba[:, :, 3].astype(np.float32) / 255.0,
                depth=None,
                normals=None,
                camera=cam,
                background=background,
            )
        )
    return views


def render_views(mesh: Any, protocol: dict[str, Any], rig_name: str) -> list[Any]:
    from gen3deval.render import rig

    renderer = get_renderer(int(protocol["render_size"]))
    cams = rig(rig_name, int(protocol["render_size"]))
    return list(
        renderer.render(
            mesh,
            cams,
            material=protocol["material"],
            background=protocol["background"],
            normalize=True,
            passes="color",  # stages keep RGB + alpha only: no float32 depth/normal pass
        )
    )


def _limits(d: dict[str, Any]) -> Any:
    from gen3deval.execute.result import Limits

    return Limits(**d)


def _execute(program: str, language: str, limits: dict[str, Any], role: str = "candidate") -> Any:
    from gen3deval.execute import run

    # role="reference": ground truth never runs on the warm workers that run candidates.
    return run(program, language, _limits(limits), role=role)


# --- the stages -----------------------------------------------------------------------------------------------


def stage_reference(case: dict[str, Any], protocol: dict[str, Any], workdir: Path) -> StageResult:
    """Load or execute the reference, render it, provide the reference image."""
    c = case_from_dict(case)
    # The suite loader found the input unusable (e.g. a corrupt image): the case fails, naming the file.
    if c.meta and c.meta.get("input_error"):
        return StageResult.fail(REFERENCE_ERROR, str(c.meta["input_error"]))
    files: dict[str, str | list[str]] = {}
    value: dict[str, Any] = {"has_reference": False}
    mesh = None
    try:
        if c.ref_mesh:
            path, mesh = canonical_mesh_file(
                c.ref_mesh, c.meta.get("up", "y") if c.meta else "y", workdir, "reference"
            )
            files["mesh"] = path
        elif c.ref_code:
            res = _execute(c.ref_code, c.ref_code_lang or "cadquery", protocol["limits"], role="reference")
            value["exec"] = {"wall_s": res.wall_s, "error_class": res.error_class}
            if not res.executable or res.mesh is None:
                return StageResult.fail(
                    REFERENCE_ERROR, f"reference program failed ({res.error_class}): {res.message}", **value
                )
            from gen3deval.mesh.io import save_mesh

            mesh = res.mesh
            files["mesh"] = str(save_mesh(mesh, workdir / "reference.glb"))
    except MeshLoadError as exc:
        return StageResult.fail(REFERENCE_ERROR, f"reference mesh: {exc}")
    if mesh is not None:
        value.update(has_reference=True, n_faces=mesh.n_faces, n_vertices=mesh.n_vertices)
        try:
            if protocol.get("rig") or c.image is None:
                value["renderer"] = renderer_description(int(protocol["render_size"]))
            # The rig's views of the reference are read only by the image metrics (candidate vs reference).
            if protocol.get("rig") and protocol.get("image_metrics"):
                views = render_views(mesh, protocol, protocol["rig"])
                files["renders"] = write_views_png(views, workdir, "ref")
            if c.image is None:
                renders = files.get("renders")
                if protocol.get("rig") == protocol["ref_rig"] and isinstance(renders, list) and renders:
                    files["image"] = renders[0]
                else:
                    views = render_views(mesh, protocol, protocol["ref_rig"])[:1]
                    files["image"] = write_views_png(views, workdir, "refimg")[0]
        except Exception as exc:
            # Geometry can still be scored without renders; the reason is kept and shown in the results.
            files.pop("renders", None)
            value["render_error"] = _short(f"{type(exc).__name__}: {exc}")
    if c.image is not None:
        if not Path(c.image).is_file():
            return StageResult.fail(REFERENCE_ERROR, f"input image not found: {c.image}", **value)
        files["image"] = str(c.image)
    return StageResult(value=value, files=files)


def stage_generate(
    case: dict[str, Any],
    system: dict[str, Any],
    reference_mesh: str | None,
    ref_image: str | None,
    workdir: Path,
    attempt: int = 1,
    fetched: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
) -> StageResult:
    """Ask the system for its candidate of ``attempt``; a mesh candidate is validated and kept as GLB.

    ``fetched``: the downloaded outputs of a remote system's job (:class:`gen3deval.systems.remote.Fetched` as
    a dict plus ``remote``, the job's facts): no system is asked; kit parts are assembled as placed.
    ``previous``: for a revising system, what the engine tells attempt i+1 about attempt i (its program, how it
    ran, its render), passed on to ``generate``.
    """
    from gen3deval.systems.base import GenerationFailed

    if fetched is not None:
        return _generated_remotely(fetched, workdir)
    c = case_from_dict(case)
    if c.image is None and ref_image is not None:
        c = dataclasses.replace(c, image=ref_image)  # image-conditioned systems see the rendered reference
    sys_obj = get_system(system)
    reference = None
    if sys_obj.needs_reference and reference_mesh is not None:
        from gen3deval.mesh.io import load_mesh

        reference = load_mesh(reference_mesh)
    try:
        if previous is not None:
            cand = sys_obj.generate(c, reference, workdir, attempt=attempt, previous=previous)
        else:
            cand = sys_obj.generate(c, reference, workdir, attempt=attempt)
    except GenerationFailed as exc:
        if not exc.files:
            return StageResult.fail(exc.error_class, exc.message)
        # A model's answer without a program is kept: the next attempt of a revision quotes it.
        return StageResult(
            status="failed",
            value={"kind": "program", "meta": exc.meta},
            files=dict(exc.files),
            error_class=exc.error_class,
            error=_short(exc.message),
        )
    value: dict[str, Any] = {"kind": cand.kind, "meta": cand.meta}
    if cand.mesh_path is not None:
        return _kept_mesh(cand.mesh_path, cand.up, workdir, value, dict(cand.files))
    assert cand.program is not None and cand.language is not None
    return _kept_program(cand.program, cand.language, workdir, value, dict(cand.files))


def prefetch_generate(batch: list[dict[str, Any]]) -> None:
    """Answer the generate stages ``batch`` (their kwargs, one system) in one call of the system's
    ``prefetch`` (a local model generating for every prompt at once); each stage then finds its answer in the
    system's memo. Best effort: any problem is left for the stage itself to report."""
    try:
        specs = {json.dumps(kw["system"], sort_keys=True) for kw in batch}
        if len(specs) != 1 or any(kw.get("fetched") is not None for kw in batch):
            return
        sys_obj = get_system(batch[0]["system"])
        prefetch = getattr(sys_obj, "prefetch", None)
        if prefetch is None:
            return
        requests = []
        for kw in batch:
            c = case_from_dict(kw["case"])
            if c.image is None and kw.get("ref_image") is not None:
                c = dataclasses.replace(c, image=kw["ref_image"])
            requests.append({"case": c, "attempt": int(kw.get("attempt", 1)), "previous": kw.get("previous")})
        prefetch(requests)
    except Exception:
        return


def _kept_mesh(
    source: str, up: str, workdir: Path, value: dict[str, Any], files: dict[str, Any], what: str = ""
) -> StageResult:
    """A mesh candidate loaded, made canonical (GLB, +Y up) and kept with its face/vertex counts and
    ``mesh_stats`` (the file size of ``source``, the file as delivered); ``what`` prefixes a load error."""
    from gen3deval.mesh.stats import mesh_stats

    try:
        path, mesh = canonical_mesh_file(source, up, workdir, "candidate")
    except MeshLoadError as exc:
        return StageResult.fail(LOAD_ERROR, f"{what}{exc}", **value)
    value.update(n_faces=mesh.n_faces, n_vertices=mesh.n_vertices, mesh_stats=mesh_stats(mesh, source))
    return StageResult(value=value, files={**files, "mesh": path})


def _kept_program(
    program: str, language: str, workdir: Path, value: dict[str, Any], files: dict[str, Any]
) -> StageResult:
    """A program candidate written as ``candidate.<suffix>`` of its language and kept."""
    from gen3deval.systems.base import PROGRAM_SUFFIX

    p = workdir / f"candidate{PROGRAM_SUFFIX[language]}"
    p.write_text(program, encoding="utf-8")
    value.update(kind="program", language=language)
    return StageResult(value=value, files={**files, "program": str(p)})


def _generated_remotely(fetched: dict[str, Any], workdir: Path) -> StageResult:
    """The generate stage of a remote job whose files are in ``workdir``: check, canonicalise, keep them."""
    meshes, parts = list(fetched.get("meshes") or []), list(fetched.get("parts") or [])
    value: dict[str, Any] = {"kind": "mesh", "meta": {}, "remote": dict(fetched.get("remote") or {})}
    files: dict[str, str | list[str]] = (
        {"answer": str(fetched["answer"])} if fetched.get("answer") else {"download": meshes}
    )
    if fetched.get("failure"):
        error_class, message = fetched["failure"]
        value["kind"] = "program" if fetched.get("language") else "mesh"
        return StageResult(
            status="failed", value=value, files=files, error_class=error_class, error=_short(message)
        )
    if fetched.get("program") is not None:
        return _kept_program(str(fetched["program"]), str(fetched.get("language")), workdir, value, files)
    source = meshes[0] if meshes else None
    if parts:
        from gen3deval.mesh.assemble import write_assembly

        files["parts"] = parts
        try:
            source = str(write_assembly([Path(p) for p in parts], workdir / "assembly.glb"))
        except MeshLoadError as exc:
            return StageResult.fail(LOAD_ERROR, f"a downloaded part does not load: {exc}", **value)
    if source is None:
        return StageResult.fail(MISSING_OUTPUT, "the finished job has no mesh to download", **value)
    up = str(fetched.get("up") or "y")
    return _kept_mesh(source, up, workdir, value, files, "the downloaded mesh does not load: ")


def stage_execute(program: str, language: str, limits: dict[str, Any], workdir: Path) -> StageResult:
    """Run a candidate program in the sandbox; its mesh is kept as GLB."""
    from gen3deval.mesh.io import save_mesh

    text = Path(program).read_text(encoding="utf-8")
    res = _execute(text, language, limits)
    value = {
        "wall_s": res.wall_s,
        "peak_mb": res.peak_mb,
        "language": language,
        "stdout": res.stdout[-2000:],
        "stderr": res.stderr[-2000:],
        "sandbox": res.sandbox,
    }
    if not res.executable or res.mesh is None:
        return StageResult.fail(
            res.error_class or "runtime", res.message or "the program produced no mesh", **value
        )
    value.update(n_faces=res.mesh.n_faces, n_vertices=res.mesh.n_vertices)
    from gen3deval.mesh.stats import mesh_stats

    out = save_mesh(res.mesh, workdir / "executed.glb")
    value["mesh_stats"] = mesh_stats(res.mesh, out)
    return StageResult(value=value, files={"mesh": str(out)})


def stage_render(mesh: str, protocol: dict[str, Any], workdir: Path, grey: bool = False) -> StageResult:
    """Render the candidate with the protocol's rig; ``grey``: also untextured views (``renders_grey``)."""
    from gen3deval.mesh.io import load_mesh

    loaded = load_mesh(mesh)
    views = render_views(loaded, protocol, protocol["rig"])
    value = {"views": len(views), "renderer": renderer_description(int(protocol["render_size"]))}
    files: dict[str, str | list[str]] = {"renders": write_views_png(views, workdir, "cand")}
    if grey:
        plain = render_views(loaded, {**protocol, "material": "grey"}, protocol["rig"])
        files["renders_grey"] = write_views_png(plain, workdir, "grey")
    return StageResult(value=value, files=files)


def stage_score(*args: Any, **kwargs: Any) -> StageResult:
    """The score stage (:func:`gen3deval.engine.scoring.stage_score`)."""
    from gen3deval.engine.scoring import stage_score as score

    return score(*args, **kwargs)


STAGE_FUNCTIONS: dict[str, Callable[..., StageResult]] = {
    "reference": stage_reference,
    "generate": stage_generate,
    "execute": stage_execute,
    "render": stage_render,
    "score": stage_score,
}

# What an unexpected exception in a stage is recorded as.
UNEXPECTED_ERROR_CLASS = {
    "reference": REFERENCE_ERROR,
    "generate": GENERATION_ERROR,
    "execute": "runtime",
    "render": "render_error",
    "score": "invalid_geometry",
}


def run_stage(
    stage: str,
    kwargs: dict[str, Any],
    workdir: str | Path,
    *,
    retries: int = 2,
    backoff_s: float = 0.5,
    functions: dict[str, Callable[..., StageResult]] | None = None,
) -> tuple[StageResult, float, float, int]:
    """Run one stage, never raising: returns (result, started, finished, tries).

    A :class:`~gen3deval.systems.base.TransientError` is retried ``retries`` times with exponential
    backoff; any other exception becomes a failed result with the stage's error class and a short
    message (the traceback's last frames are kept in ``value["traceback"]``).
    """
    from gen3deval.systems.base import GenerationFailed, TransientError

    fn = (functions or STAGE_FUNCTIONS)[stage]
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tries = 0
    while True:
        tries += 1
        try:
            result = fn(**kwargs, workdir=wd)
            break
        except TransientError as exc:
            if tries > retries:
                result = StageResult.fail(UNEXPECTED_ERROR_CLASS[stage], f"{exc} (after {tries} tries)")
                break
            time.sleep(backoff_s * 2 ** (tries - 1))
            shutil.rmtree(wd, ignore_errors=True)
            wd.mkdir(parents=True, exist_ok=True)
        except GenerationFailed as exc:
            result = StageResult.fail(exc.error_class, exc.message)
            break
        except MeshLoadError as exc:
            cls = REFERENCE_ERROR if stage == "reference" else LOAD_ERROR
            result = StageResult.fail(cls, str(exc))
            break
        except DependencyError:
            raise  # the environment, not this case: the engine stops the run with the fix
        except Exception as exc:
            tb = traceback.format_exc(limit=-4)
            result = StageResult.fail(
                UNEXPECTED_ERROR_CLASS[stage], f"{type(exc).__name__}: {exc}", traceback=tb[-3000:]
            )
            break
    return result, started, time.time(), tries
