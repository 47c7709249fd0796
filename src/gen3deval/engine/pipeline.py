"""The pipeline of one (case, system, attempt): its stages, their order, what each reads and when each
applies. The one definition that planning and resume (:mod:`~gen3deval.engine.runner`), the progress totals,
and the result rows and progress counts (:mod:`~gen3deval.engine.results`) all read.

::

    reference  (once per case: system "", attempt 1)
        -> generate  (the system's candidate for this attempt)
        -> execute   (only when the candidate is a program)
        -> render    (only when the protocol has a rig)
        -> score     (when the case has a reference mesh, or the protocol has reference-free metrics)

A stage runs when every stage it ``requires`` succeeded and every other stage it ``reads`` has finished
(``score`` reads the candidate's renders but is still scored on geometry when rendering failed). ``MESH`` names
the stage that made the candidate's mesh: ``execute`` for a program, else ``generate``.

Attempts: a system makes ``attempts(case)`` attempts, each its own pipeline (sharing the case's reference).
Attempts are numbered 1.. in order. They are independent (all start once the reference is done), except for a
revising system (``Context.revises``): the ``generate`` of attempt i+1 waits until attempt i's :data:`FEEDBACK`
stages have finished and reads their rows (its previous program, how it ran, its render).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gen3deval.config import Protocol
    from gen3deval.engine.store import StageRow

REFERENCE, GENERATE, EXECUTE, RENDER, SCORE = "reference", "generate", "execute", "render", "score"
MESH = "mesh"  # stands for the stage that made the candidate mesh (execute for programs, else generate)


@dataclass(frozen=True)
class StageDef:
    """One stage of the pipeline.

    Attributes:
        name: the stage (the ``stage`` column of the store).
        per_case: run once per case (system ``""``, attempt 1) instead of once per pipeline.
        reads: the stages whose rows are its inputs, in the order their digests enter its key (``MESH``
            resolved per pipeline); a stage that does not apply reads as "no row".
        requires: those of ``reads`` that must have succeeded for it to run (the others need only finish).
        applies: when it applies (see :func:`applies`).
    """

    name: str
    per_case: bool
    reads: tuple[str, ...]
    requires: tuple[str, ...]
    applies: str


PIPELINE: tuple[StageDef, ...] = (
    StageDef(REFERENCE, True, (), (), "always"),
    StageDef(GENERATE, False, (REFERENCE,), (REFERENCE,), "always"),
    StageDef(EXECUTE, False, (GENERATE,), (GENERATE,), "the candidate is a program"),
    StageDef(RENDER, False, (MESH,), (MESH,), "the protocol renders (has a rig)"),
    StageDef(
        SCORE,
        False,
        (MESH, RENDER, REFERENCE),
        (MESH, REFERENCE),
        "the case has a reference mesh, or the protocol has reference-free metrics (clip_score, ...)",
    ),
)
STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
BY_NAME: dict[str, StageDef] = {s.name: s for s in PIPELINE}
PIPELINE_STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE if not s.per_case)

# The stages of attempt i that the generate stage of attempt i+1 of a revising system reads.
FEEDBACK: tuple[str, ...] = (GENERATE, EXECUTE, RENDER)

# States of a stage in one pipeline.
DONE = "done"  # its row succeeded
FAILED = "failed"  # its row failed
READY = "ready"  # every input is there: it runs next
WAITING = "waiting"  # an input has not finished yet (it applies, or is expected to)
BLOCKED = "blocked"  # a required input failed: it never runs
NA = "n/a"  # does not apply to this pipeline
LEFT = (READY, WAITING)  # still to run
COUNTED = (DONE, FAILED, READY, WAITING)  # part of the work of a pipeline


@dataclass(frozen=True)
class Context:
    """What a pipeline's shape depends on besides its rows.

    ``renders``: the protocol renders. ``program``: the system is expected to return a program (its
    ``output``), an estimate used only before its ``generate`` row exists; None when unknown (``any``).
    ``revises``: attempt i+1 of the system reads attempt i (see :data:`FEEDBACK`).
    ``reference_free``: the protocol has metrics scored without a reference mesh (from the case's caption or
    input image), so cases without one are scored too.
    """

    renders: bool
    program: bool | None = None
    revises: bool = False
    reference_free: bool = False

    @staticmethod
    def of(protocol: Protocol, program: bool | None = None, revises: bool = False) -> Context:
        """The context of a pipeline under ``protocol``."""
        return Context(
            renders=protocol.renders,
            program=program,
            revises=revises,
            reference_free=bool(protocol.reference_free()),
        )


def has_reference(ref: StageRow | None) -> bool:
    """A reference row that succeeded with a mesh (something to score against)."""
    return ref is not None and ref.ok and bool(ref.artifacts.get("mesh"))


def applies(stage: str, rows: Mapping[str, StageRow], ctx: Context) -> bool:
    """Whether ``stage`` applies to the pipeline of ``rows`` ({stage: row}); exact once the stages it reads
    have rows, an estimate before (execute: the system's expected output; score: yes)."""
    if stage == EXECUTE:
        gen = rows.get(GENERATE)
        return "program" in gen.artifacts if gen is not None else bool(ctx.program)
    if stage == RENDER:
        return ctx.renders
    if stage == SCORE:
        ref = rows.get(REFERENCE)
        return ref is None or has_reference(ref) or (ctx.reference_free and ref.ok)
    return True


def mesh_stage(rows: Mapping[str, StageRow], ctx: Context) -> str:
    """The stage whose ``mesh`` artifact is the candidate mesh."""
    return EXECUTE if applies(EXECUTE, rows, ctx) else GENERATE


def resolve(name: str, rows: Mapping[str, StageRow], ctx: Context) -> str:
    return mesh_stage(rows, ctx) if name == MESH else name


def states(rows: Mapping[str, StageRow], ctx: Context) -> dict[str, str]:
    """{stage: state} of one pipeline given its rows ({stage: row}, the case's reference included)."""
    out: dict[str, str] = {}
    for st in PIPELINE:
        if not applies(st.name, rows, ctx):
            out[st.name] = NA
            continue
        inputs = [resolve(r, rows, ctx) for r in st.reads]
        required = {resolve(r, rows, ctx) for r in st.requires}
        if any(out[i] in (FAILED, BLOCKED) for i in inputs if i in required):
            out[st.name] = BLOCKED
        elif any(out[i] in LEFT for i in inputs):
            out[st.name] = WAITING
        else:
            row = rows.get(st.name)
            out[st.name] = READY if row is None else (DONE if row.ok else FAILED)
    return out


def ready(rows: Mapping[str, StageRow], ctx: Context) -> list[str]:
    """The stages of the pipeline that can run now (inputs finished, no row yet)."""
    return [name for name, state in states(rows, ctx).items() if state == READY]


def finished(state: Mapping[str, str]) -> bool:
    """No stage of the pipeline is left to run."""
    return not any(s in LEFT for s in state.values())


def expected(state: Mapping[str, str]) -> set[str]:
    """The pipeline stages (reference aside) that have run or will run: its share of the progress totals."""
    return {name for name in PIPELINE_STAGES if state[name] in COUNTED}


def row_digest(row: StageRow | None) -> str:
    """What a downstream stage depends on: status + artifacts (content hashes) of an upstream row."""
    if row is None:
        return "-"
    from gen3deval.config import stable_hash

    return stable_hash([row.status, row.artifacts])


def inputs(stage: str, rows: Mapping[str, StageRow], ctx: Context) -> list[StageRow | None]:
    """The rows ``stage`` reads, in key order (None for a stage that does not apply or has no row)."""
    out: list[StageRow | None] = []
    for r in BY_NAME[stage].reads:
        name = resolve(r, rows, ctx)
        out.append(rows.get(name) if applies(name, rows, ctx) else None)
    return out


def feedback_ready(rows: Mapping[str, StageRow], ctx: Context) -> bool:
    """Whether the :data:`FEEDBACK` stages of a pipeline ({stage: row}, its reference included) have all
    finished (or will never run): its next attempt can be asked for."""
    state = states(rows, ctx)
    return not any(state[name] in LEFT for name in FEEDBACK)
