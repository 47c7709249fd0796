"""Tiny stand-in stage functions for engine tests: real files, real store, no meshes or renderers.

Each stage writes a small text file whose content is derived from its inputs, so the final ``score``
value is a deterministic function of the whole pipeline and any mix-up or double run shows.
System settings steer failures: ``fail`` (case ids whose generate fails), ``crash`` (case ids whose
generate raises), ``no_runtime`` (case ids whose generate finds a runtime missing), ``segfault`` (case ids whose generate kills its process), ``program`` (emit a program ->
execute stage), ``flaky`` (a folder counting calls: TransientError until the second call), ``sleep``
(seconds per stage, for kill tests), ``outputs`` (a folder: the candidate is the content of
``{id}.txt`` or ``{id}/{attempt}.txt`` there, missing_output without it -- a ``files``-like system).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from gen3deval.engine.stages import StageResult
from gen3deval.errors import DependencyError
from gen3deval.systems.base import GenerationFailed, TransientError


def _h(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _sleep(settings: dict[str, Any]) -> None:
    if settings.get("sleep"):
        time.sleep(float(settings["sleep"]))


def _note_pid() -> None:
    # Kill tests check that worker processes do not outlive a killed engine.
    folder = os.environ.get("GEN3DEVAL_TEST_PIDS")
    if folder:
        (Path(folder) / str(os.getpid())).touch()


def reference(case: dict[str, Any], protocol: dict[str, Any], workdir: Path) -> StageResult:
    _note_pid()
    if case["id"].startswith("noref"):
        return StageResult(value={"has_reference": False})
    if case["id"].startswith("badref"):
        return StageResult.fail("reference_error", f"{case['id']}: corrupt reference")
    p = workdir / "ref.txt"
    # A case with a reference file: the reference's content is the file's (so a changed file shows).
    content = Path(case["ref_mesh"]).read_text() if case.get("ref_mesh") else ""
    p.write_text(f"ref:{case['id']}" + (f":{content}" if content else ""))
    time.sleep(float(case["meta"].get("sleep", 0)))
    return StageResult(value={"has_reference": True}, files={"mesh": str(p), "image": str(p)})


def generate(
    case: dict[str, Any],
    system: dict[str, Any],
    reference_mesh: str | None,
    ref_image: str | None,
    workdir: Path,
    attempt: int = 1,
) -> StageResult:
    s = system["settings"]
    _note_pid()
    _sleep(s)
    cid = case["id"]
    if cid in s.get("fail", []):
        raise GenerationFailed("missing_output", f"no output for {cid}")
    if cid in s.get("crash", []):
        raise RuntimeError(f"boom on {cid}")
    if cid in s.get("no_runtime", []):
        raise DependencyError("node not found: install Node >= 20")
    if cid in s.get("segfault", []):
        os.kill(os.getpid(), signal.SIGSEGV)
    if s.get("flaky"):
        counter = Path(s["flaky"]) / f"{cid}.count"
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        if n < 2:
            raise TransientError("rate limited")
    ref = Path(reference_mesh).read_text() if reference_mesh else "none"
    tag = f"#{attempt}" if attempt != 1 else ""
    if s.get("outputs"):
        found = [Path(s["outputs"]) / f"{cid}.txt", Path(s["outputs"]) / cid / f"{attempt}.txt"]
        found = [f for f in found if f.is_file()]
        if not found:
            raise GenerationFailed("missing_output", f"no output for {cid}")
        tag = ":" + found[-1].read_text()
    if s.get("program"):
        p = workdir / "candidate.js"
        p.write_text(f"prog:{system['label']}:{cid}{tag}:{ref}")
        return StageResult(value={"kind": "program", "language": "threejs"}, files={"program": str(p)})
    p = workdir / "candidate.txt"
    p.write_text(f"mesh:{system['label']}:{cid}{tag}:{ref}")
    return StageResult(value={"kind": "mesh"}, files={"mesh": str(p)})


def execute(program: str, language: str, limits: dict[str, Any], workdir: Path) -> StageResult:
    text = Path(program).read_text()
    if "bad" in text:
        return StageResult.fail("runtime", "ReferenceError: x is not defined")
    p = workdir / "executed.txt"
    p.write_text(f"exec:{text}")
    return StageResult(value={"wall_s": 0.0}, files={"mesh": str(p)})


def render(mesh: str, protocol: dict[str, Any], workdir: Path) -> StageResult:
    text = Path(mesh).read_text()
    paths = []
    for i in range(2):
        p = workdir / f"view{i}.png"
        p.write_text(f"view{i}:{text}")
        paths.append(str(p))
    return StageResult(value={"views": 2}, files={"renders": paths})


def score(
    candidate_mesh: str,
    reference_mesh: str,
    candidate_renders: list[str] | None,
    reference_renders: list[str] | None,
    protocol: dict[str, Any],
    workdir: Path,
) -> StageResult:
    a = Path(candidate_mesh).read_text()
    b = Path(reference_mesh).read_text()
    r = "".join(Path(p).read_text() for p in candidate_renders or [])
    digest = int(_h(a, b, r), 16)
    return StageResult(
        value={"chamfer_l1": (digest % 10_000) / 10_000.0, "volume_iou": 1.0 if "oracle" in a else 0.5}
    )


FUNCTIONS = {
    "reference": reference,
    "generate": generate,
    "execute": execute,
    "render": render,
    "score": score,
}


def run_two_systems(run_dir: Path, n: int, protocol: Any, *, width: int = 0) -> None:
    """A finished in-process run of ``n`` cases (``c0``.. or zero-padded to ``width``) x a mesh system ``m``
    and a program system ``p`` (the fixture of the command and store tests)."""
    from gen3deval.config import SystemSpec
    from gen3deval.engine.runner import CaseEntry, Engine
    from gen3deval.suites.base import Case

    ids = [f"c{i:0{width}d}" for i in range(n)]
    Engine(
        run_dir,
        [CaseEntry(key=c, case=Case(id=c), suite="t") for c in ids],
        [
            SystemSpec(name="standin", label="m"),
            SystemSpec(name="standin", label="p", settings={"program": True}),
        ],
        protocol,
        fingerprint={"name": "default", "hash": "t"},
        functions=FUNCTIONS,
        needs_reference={"m": True, "p": True},
        inline=True,
    ).run()
