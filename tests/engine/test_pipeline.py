"""The one pipeline definition: states of a pipeline from its rows, checked case by case against the
rules written out by hand (which stage runs next, which never runs, when a pipeline is finished)."""

from __future__ import annotations

from typing import Any

import pytest

from gen3deval.engine import pipeline as pl
from gen3deval.engine.store import STAGES, StageRow


def row(stage: str, ok: bool = True, **artifacts: Any) -> StageRow:
    return StageRow(
        case="c",
        system="" if stage == "reference" else "s",
        attempt=1,
        stage=stage,
        status="done" if ok else "failed",
        input_hash="h",
        protocol_hash="p",
        started=0.0,
        finished=1.0,
        seconds=1.0,
        error_class=None if ok else "x",
        error=None if ok else "x",
        artifacts=artifacts,
        value={},
        session=1,
    )


REF = row("reference", mesh="r.glb")
MESH = row("generate", mesh="m.glb")
PROG = row("generate", program="p.js")
RENDERS = pl.Context(renders=True)
NO_RENDERS = pl.Context(renders=False)


def test_the_store_and_the_pipeline_name_the_same_stages_in_order() -> None:
    assert pl.STAGES == STAGES == ("reference", "generate", "execute", "render", "score")
    assert STAGES[1:] == pl.PIPELINE_STAGES


@pytest.mark.parametrize(
    ("rows", "ctx", "expected"),
    [
        # Nothing yet: only the reference can run; execute counts when the system is expected to write programs.
        ({}, RENDERS, ["ready", "waiting", "n/a", "waiting", "waiting"]),
        ({}, pl.Context(renders=True, program=True), ["ready", "waiting", "waiting", "waiting", "waiting"]),
        ({"reference": REF}, RENDERS, ["done", "ready", "n/a", "waiting", "waiting"]),
        # A mesh candidate: no execute; render next, score after it.
        ({"reference": REF, "generate": MESH}, RENDERS, ["done", "done", "n/a", "ready", "waiting"]),
        ({"reference": REF, "generate": MESH}, NO_RENDERS, ["done", "done", "n/a", "n/a", "ready"]),
        # A program: execute next, even when the system was expected to write meshes.
        (
            {"reference": REF, "generate": PROG},
            pl.Context(renders=True, program=False),
            ["done", "done", "ready", "waiting", "waiting"],
        ),
        (
            {"reference": REF, "generate": PROG, "execute": row("execute", False)},
            RENDERS,
            ["done", "done", "failed", "blocked", "blocked"],
        ),
        # A failed render does not stop scoring (geometry only).
        (
            {"reference": REF, "generate": MESH, "render": row("render", False)},
            RENDERS,
            ["done", "done", "n/a", "failed", "ready"],
        ),
        # A failed reference blocks everything; a reference without a mesh means nothing to score.
        ({"reference": row("reference", False)}, RENDERS, ["failed", "blocked", "n/a", "blocked", "n/a"]),
        ({"reference": row("reference"), "generate": MESH}, RENDERS, ["done", "done", "n/a", "ready", "n/a"]),
        (
            {"reference": REF, "generate": row("generate", False)},
            RENDERS,
            ["done", "failed", "n/a", "blocked", "blocked"],
        ),
    ],
)
def test_states(rows: dict[str, StageRow], ctx: pl.Context, expected: list[str]) -> None:
    assert list(pl.states(rows, ctx).values()) == expected


def test_finished_expected_and_inputs() -> None:
    full = {
        "reference": REF,
        "generate": PROG,
        "execute": row("execute", mesh="e.glb"),
        "render": row("render"),
    }
    state = pl.states(full, RENDERS)
    assert state["score"] == "ready" and not pl.finished(state)
    assert pl.expected(state) == {"generate", "execute", "render", "score"}
    assert pl.mesh_stage(full, RENDERS) == "execute"
    # score reads the mesh (execute's, for a program), the renders and the reference, in that order.
    assert pl.inputs("score", full, RENDERS) == [full["execute"], full["render"], REF]
    assert pl.inputs("score", full, NO_RENDERS) == [full["execute"], None, REF]
    done = {**full, "score": row("score")}
    assert pl.finished(pl.states(done, RENDERS))
    blocked = pl.states({"reference": row("reference", False)}, RENDERS)
    assert pl.finished(blocked) and pl.expected(blocked) == set()
