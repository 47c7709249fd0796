"""What each stage of a pipeline is given and the key it is stored under: a part of
:class:`gen3deval.engine.runner.Engine`.

A stage's key chains the digests of the rows it reads (:func:`gen3deval.engine.pipeline.row_digest`) with
everything else it reads: the case (its caption and prompt only for the stages that read them), the content of
the files the reference stage loads, a system's settings and outside inputs, the attempt a revision revises,
and, for learned metrics, the models' weight hashes and the case's text. A rerun redoes what changed, only that.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen3deval.config import Protocol, stable_hash
from gen3deval.engine import pipeline as pl
from gen3deval.engine.artifacts import content_digest
from gen3deval.engine.learned import score_key_part
from gen3deval.engine.pipeline import row_digest
from gen3deval.suites.base import Case

if TYPE_CHECKING:
    from gen3deval.engine.runner import CaseEntry
    from gen3deval.engine.runner import _Pipe as Pipe
    from gen3deval.engine.store import StageRow


def case_fingerprint(case: Case, *, text: bool = True) -> str:
    """Digest of what the stages read of ``case``; ``text=False``: without its caption and prompt (the
    reference stage's view: a new caption rescores, it does not reload the reference)."""
    d = dataclasses.asdict(case)
    d["meta"] = {"up": (case.meta or {}).get("up", "y")}
    if not text:
        d["caption"] = d["prompt"] = None
    return stable_hash(d)


class StageInputs:
    """Mixin of the Engine: what it reads of the engine is declared here."""

    run_dir: Path
    params: dict[str, Any]
    params_hash: str
    protocol: Protocol
    objects: dict[str, Any]
    models: dict[str, dict[str, Any]]
    skipped_metrics: dict[str, str]
    _case_by_key: dict[str, CaseEntry]
    _case_dict: dict[str, dict[str, Any]]
    _case_fp: dict[str, str]
    _sys_dict: dict[str, dict[str, Any]]
    _sys_key: dict[str, dict[str, Any]]
    _needs_ref: dict[str, bool]

    def _previous_view(self, pipe: Pipe) -> dict[str, StageRow] | None:
        raise NotImplementedError

    def _hash(self, *parts: Any) -> str:
        return stable_hash([self.params_hash, *parts])

    def _abs(self, rel: str | None) -> str | None:
        return str(self.run_dir / rel) if rel else None

    def _input_fingerprint(self, case: str, system: str, attempt: int) -> str:
        obj = self.objects.get(system)
        if obj is None:
            return ""
        try:
            return str(obj.input_fingerprint(self._case_by_key[case].case, attempt))
        except Exception as exc:  # an unreadable file: generate runs (again) and reports it
            return f"error:{type(exc).__name__}:{exc}"

    def _reference_files(self, case: Case) -> str:
        """Digest of the content of the files the reference stage reads (reference mesh, input image)."""
        return stable_hash([content_digest(p) if p else "-" for p in (case.ref_mesh, case.image)])

    def _feedback(self, view: dict[str, StageRow]) -> dict[str, Any]:
        """What attempt i+1 is told about attempt i: its program (or answer), whether and how it ran, its
        first render (the protocol's rig: ``ref`` for code3d/gencad, the view of the reference image)."""
        gen = view.get(pl.GENERATE)
        ex = view.get(pl.EXECUTE)
        rn = view.get(pl.RENDER)
        failed = next((r for r in (gen, ex) if r is not None and not r.ok), None)
        renders = rn.artifacts.get("renders") if rn is not None and rn.ok else None
        return {
            "program": self._abs(gen.artifacts.get("program")) if gen is not None else None,
            "answer": self._abs(gen.artifacts.get("answer")) if gen is not None else None,
            "executable": failed is None and ex is not None and ex.ok,
            "error_class": failed.error_class if failed is not None else None,
            "error": failed.error if failed is not None else None,
            "render": self._abs(renders[0]) if renders else None,
        }

    def _inputs(
        self, stage: str, pipe: Pipe, view: dict[str, StageRow], ctx: pl.Context
    ) -> tuple[dict[str, Any], str]:
        """(kwargs, key) of a pipeline stage; the key chains the digests of the rows it reads."""
        digests = [row_digest(r) for r in pl.inputs(stage, view, ctx)]
        kwargs: dict[str, Any]
        ref = view[pl.REFERENCE]
        case, system = pipe.case, pipe.system
        if stage == pl.GENERATE:
            fp = self._input_fingerprint(case, system, pipe.attempt)
            # Attempt 1 of a system reading no outside files keeps the key of earlier versions.
            extra = [] if pipe.attempt == 1 and not fp else [pipe.attempt, fp]
            kwargs = {
                "case": self._case_dict[case],
                "system": self._sys_dict[system],
                "reference_mesh": self._abs(ref.artifacts.get("mesh")) if self._needs_ref[system] else None,
                "ref_image": self._abs(ref.artifacts.get("image")),
                "attempt": pipe.attempt,
            }
            prev = self._previous_view(pipe)
            if prev is not None:
                # A revision reads the attempt it revises: its rows are part of its key.
                kwargs["previous"] = self._feedback(prev)
                extra += ["previous", *(row_digest(prev.get(name)) for name in pl.FEEDBACK)]
            return kwargs, self._hash(stage, self._case_fp[case], self._sys_key[system], *extra, *digests)
        if stage == pl.EXECUTE:
            gen = view[pl.GENERATE]
            kwargs = {
                "program": self._abs(gen.artifacts["program"]),
                "language": gen.value.get("language", "threejs"),
                "limits": self.params["limits"],
            }
            return kwargs, self._hash(stage, *digests)
        mesh_row = view[pl.mesh_stage(view, ctx)]
        if stage == pl.RENDER:
            # Without a reference (image suites) the renders are what a reader judges: grey views show the
            # shape apart from its texture.
            grey = not pl.has_reference(ref) and self.params.get("material") != "grey"
            kwargs = {"mesh": self._abs(mesh_row.artifacts["mesh"]), "protocol": self.params}
            if grey:
                kwargs["grey"] = True
            return kwargs, self._hash(stage, *digests, *(["grey"] if grey else []))
        assert stage == pl.SCORE, stage
        render = view.get(pl.RENDER)
        renders = render.artifacts.get("renders") if render is not None and render.ok else None
        kwargs = {
            "candidate_mesh": self._abs(mesh_row.artifacts["mesh"]),
            "reference_mesh": self._abs(ref.artifacts.get("mesh")),
            "candidate_renders": [self._abs(p) for p in renders] if renders else None,
            "reference_renders": [self._abs(p) for p in ref.artifacts.get("renders", [])] or None,
            "protocol": self.params,
        }
        if not self.protocol.learned():
            return kwargs, self._hash(stage, *digests)  # the key of earlier versions
        # Learned metrics also read the case's text (clip_score), its input image (in the reference row's
        # digest) and the models' weights: all of them are in the key.
        c = self._case_by_key[case].case
        kwargs.update(
            text=c.caption or c.prompt,
            input_image=self._abs(ref.artifacts.get("image")),
            models={m: src["path"] for m, src in self.models.items()},
            skip=sorted(self.skipped_metrics),
        )
        extra = score_key_part(self.models, self.skipped_metrics)
        return kwargs, self._hash(stage, *digests, *extra, kwargs["text"])
