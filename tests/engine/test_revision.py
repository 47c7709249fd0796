"""Revising systems: attempt i+1 waits for attempt i's generate -> execute -> render and is told about them
(its program, its error class and message, its render); each attempt is its own stored row; a rerun asks no
stored attempt again and resumes a case at its first missing attempt. Stand-in stages (engine_standins)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine_standins import FUNCTIONS

from gen3deval.config import SystemSpec, get_protocol
from gen3deval.engine.runner import CaseEntry, Engine, RunResult
from gen3deval.engine.stages import StageResult
from gen3deval.engine.store import Store
from gen3deval.suites.base import Case

PROTOCOL = get_protocol({"name": "default", "metrics": ["chamfer_l1"], "image_metrics": []})
K = 3


def revising_generate(
    case: dict[str, Any],
    system: dict[str, Any],
    reference_mesh: str | None,
    ref_image: str | None,
    workdir: Path,
    attempt: int = 1,
    previous: dict[str, Any] | None = None,
) -> StageResult:
    """Attempt 1: a broken program for case ``bad``; each revision notes what it was told (``meta.told``)."""
    told = ""
    if attempt == 1:
        text = "bad v1" if case["id"] == "bad" else "good v1"
    else:
        assert previous is not None
        prev = Path(previous["program"]).read_text()
        seen = Path(previous["render"]).read_text() if previous["render"] else "-"
        told = f"[{previous['error_class']}] {previous['error']} | render {seen} | prev {prev}"
        text = f"fixed v{attempt}"  # (the stand-in executor fails programs that contain "bad")
    p = workdir / "candidate.js"
    p.write_text(text)
    value = {"kind": "program", "language": "threejs", "meta": {"told": told}}
    return StageResult(value=value, files={"program": str(p)})


class Reviser:
    needs_reference = True
    output = "program"
    revises = True

    def preflight(self, cases: list[Case]) -> list[str]:
        return []

    def attempts(self, case: Case) -> int:
        return K

    def input_fingerprint(self, case: Case, attempt: int) -> str:
        return ""


def run(run_dir: Path, cases: list[str]) -> RunResult:
    return Engine(
        run_dir,
        [CaseEntry(key=c, case=Case(id=c), suite="t") for c in cases],
        [SystemSpec(name="standin", label="vlm", settings={})],
        PROTOCOL,
        fingerprint={"name": "default", "hash": "t"},
        functions={**FUNCTIONS, "generate": revising_generate},
        system_objects={"vlm": Reviser()},
        inline=True,
    ).run()


def _rows(run_dir: Path) -> dict[tuple[str, int, str], Any]:
    with Store(run_dir, readonly=True) as store:
        return {(r.case, r.attempt, r.stage): r for r in store.rows() if r.system == "vlm"}


def _told(row: Any) -> str:
    return str(row.value["meta"]["told"])


def test_each_attempt_reads_the_one_before(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, ["bad", "good"])
    rows = _rows(out)
    assert all(rows[(c, a, "generate")].ok for c in ("bad", "good") for a in range(1, K + 1))
    # The broken first program: attempt 2 is told its error class and message and sees its program verbatim.
    assert not rows[("bad", 1, "execute")].ok
    assert (
        _told(rows[("bad", 2, "generate")])
        == "[runtime] ReferenceError: x is not defined | render - | prev bad v1"
    )
    assert rows[("bad", 2, "execute")].ok
    # A program that ran: attempt 2 sees its render (the first view), no error.
    assert _told(rows[("good", 2, "generate")]) == "[None] None | render view0:exec:good v1 | prev good v1"
    # Attempt 3 reads attempt 2, and starts only after attempt 2 was executed and rendered.
    assert _told(rows[("bad", 3, "generate")]) == "[None] None | render view0:exec:fixed v2 | prev fixed v2"
    for case in ("bad", "good"):
        for a in range(2, K + 1):
            last = rows.get((case, a - 1, "render")) or rows[(case, a - 1, "execute")]
            assert rows[(case, a, "generate")].started >= last.finished


def test_rerun_asks_nothing_again_and_resumes_at_the_first_missing_attempt(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, ["bad", "good"])
    again = run(out, ["bad", "good"])
    assert sum(again.ran.values()) == 0
    # Lose attempt 2 of one case (as if killed before it was stored): only it is asked again; attempt 3 is
    # kept, because attempt 2's new rows are the same and attempt 3's key chains them.
    before = _rows(out)
    with Store(out) as store:
        store.delete([("good", "vlm", 2, st) for st in ("generate", "execute", "render", "score")])
    resumed = run(out, ["bad", "good"])
    assert resumed.ran["generate"] == 1
    after = _rows(out)
    assert _told(after[("good", 2, "generate")]) == _told(before[("good", 2, "generate")])
    assert after[("good", 3, "generate")].finished == before[("good", 3, "generate")].finished
