"""Reruns redo exactly what changed (input file contents, failed stages on request), attempts are a real
dimension, progress totals match the work, and impossible runs are refused before any work.

Stand-in stages (engine_standins) with planning hooks (:class:`Hooks`) in the role of the ``files``
system: the candidate of a case is the content of a file in an outputs folder, and the system's
``input_fingerprint`` is that file's content hash.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from engine_standins import FUNCTIONS

from gen3deval.config import SystemSpec, get_protocol
from gen3deval.engine.artifacts import ArtifactStore, content_digest
from gen3deval.engine.build import preflight
from gen3deval.engine.progress import NullProgress
from gen3deval.engine.results import build_rows, stage_progress
from gen3deval.engine.runner import CaseEntry, Engine, RunResult
from gen3deval.engine.store import Store
from gen3deval.errors import ConfigError
from gen3deval.suites.base import Case

PROTOCOL = get_protocol({"name": "default", "metrics": ["chamfer_l1", "volume_iou"], "image_metrics": []})


class Hooks:
    """The planning hooks of a stand-in system: attempts per case id, files read per (case id, attempt)."""

    needs_reference = True

    def __init__(
        self,
        output: str = "mesh",
        attempts: dict[str, int] | None = None,
        outputs: Path | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.output = output
        self._attempts = attempts or {}
        self.outputs = outputs
        self.warnings = warnings

    def preflight(self, cases: list[Case]) -> list[str]:
        return list(self.warnings)

    def attempts(self, case: Case) -> int:
        return self._attempts.get(case.id, 1)

    def input_fingerprint(self, case: Case, attempt: int) -> str:
        if self.outputs is None:
            return ""
        return ":".join(
            content_digest(p)
            for p in (self.outputs / f"{case.id}.txt", self.outputs / case.id / f"{attempt}.txt")
        )


class Recorder(NullProgress):
    """Progress totals (start + every adjustment) and updates per stage."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.updates: dict[str, int] = {}

    def start(self, totals: dict[str, int]) -> None:
        self.totals = dict(totals)

    def add_total(self, stage: str, n: int) -> None:
        self.totals[stage] = self.totals.get(stage, 0) + n

    def update(self, stage: str, status: str, label: str = "", skipped: bool = False) -> None:
        self.updates[stage] = self.updates.get(stage, 0) + 1


def run(
    run_dir: Path,
    cases: list[Case],
    systems: dict[str, tuple[dict[str, Any], Hooks]],
    *,
    retry_failed: bool = False,
    progress: NullProgress | None = None,
) -> RunResult:
    return Engine(
        run_dir,
        [CaseEntry(key=c.id, case=c, suite="t") for c in cases],
        [SystemSpec(name="standin", label=label, settings=s) for label, (s, _h) in systems.items()],
        PROTOCOL,
        fingerprint={"name": "default", "hash": "t"},
        functions=FUNCTIONS,
        system_objects={label: h for label, (_s, h) in systems.items()},
        retry_failed=retry_failed,
        progress=progress,
        inline=True,
    ).run()


def rows_by(run_dir: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    with Store(run_dir, readonly=True) as store:
        rows, unfinished = build_rows(store)
    assert not unfinished
    return {(r["case"], r["system"], r["attempt"]): r for r in rows}


def test_changed_outputs_are_rescored_and_unchanged_ones_skipped(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "c0.txt").write_text("corrupt")
    (outputs / "c2.txt").write_text("good")
    (outputs / "c3.txt").write_text("untouched")
    cases = [Case(id=f"c{i}") for i in range(4)]
    systems = {"files": ({"outputs": str(outputs)}, Hooks(outputs=outputs))}
    run(tmp_path / "run", cases, systems)
    before = rows_by(tmp_path / "run")
    assert before[("c1", "files", 1)]["error_class"] == "missing_output"

    (outputs / "c0.txt").write_text("fixed")  # fix a corrupt output
    (outputs / "c1.txt").write_text("added")  # add a missing one
    (outputs / "c2.txt").write_text("better")  # replace a good one
    os.utime(outputs / "c3.txt", ns=(1, 1))  # touched, same content: not rerun
    res = run(tmp_path / "run", cases, systems)
    # Exactly the three changed pipelines ran again, the reference of each case was kept.
    assert res.ran == {"reference": 0, "generate": 3, "execute": 0, "render": 3, "score": 3}
    assert res.skipped["generate"] == 1 and res.skipped["score"] == 1
    after = rows_by(tmp_path / "run")
    assert after[("c1", "files", 1)]["executable"] and after[("c1", "files", 1)]["chamfer_l1"] is not None
    for c in ("c0", "c2"):
        assert after[(c, "files", 1)]["chamfer_l1"] != before[(c, "files", 1)]["chamfer_l1"]
    assert after[("c3", "files", 1)] == before[("c3", "files", 1)]

    # An output rewritten with the same bytes: generate reruns (new file), the stages after it do not.
    (outputs / "c0.txt").write_text("fixed")
    os.utime(outputs / "c0.txt", ns=(2, 2))
    res = run(tmp_path / "run", cases, systems)
    assert sum(res.ran.values()) == 0

    # Changed to the same content as before: a byte-identical candidate keeps render and score.
    (outputs / "c0.txt").unlink()
    (outputs / "c0").mkdir()
    (outputs / "c0" / "1.txt").write_text("fixed")
    res = run(tmp_path / "run", cases, systems)
    assert res.ran == {"reference": 0, "generate": 1, "execute": 0, "render": 0, "score": 0}


def test_retry_failed_reruns_failed_stages_with_unchanged_keys(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    cases = [Case(id="c0"), Case(id="c1")]
    (outputs / "c0.txt").write_text("ok")
    # No input fingerprint: the stage's key does not see the folder (like a remote system's failure).
    systems = {"sys": ({"outputs": str(outputs)}, Hooks())}
    run(tmp_path / "run", cases, systems)
    (outputs / "c1.txt").write_text("there now")
    res = run(tmp_path / "run", cases, systems)
    assert sum(res.ran.values()) == 0 and res.skipped["generate"] == 2  # a failure is a result
    assert rows_by(tmp_path / "run")[("c1", "sys", 1)]["error_class"] == "missing_output"
    res = run(tmp_path / "run", cases, systems, retry_failed=True)
    assert res.ran == {"reference": 0, "generate": 1, "execute": 0, "render": 1, "score": 1}
    assert rows_by(tmp_path / "run")[("c1", "sys", 1)]["executable"]


def test_reference_key_covers_the_reference_file_contents(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(2):
        (refs / f"r{i}.txt").write_text(f"shape {i}")
    cases = [Case(id=f"c{i}", ref_mesh=str(refs / f"r{i}.txt")) for i in range(2)]
    systems = {"sys": ({}, Hooks())}
    run(tmp_path / "run", cases, systems)
    before = rows_by(tmp_path / "run")
    os.utime(refs / "r1.txt", ns=(5, 5))  # touched only
    assert sum(run(tmp_path / "run", cases, systems).ran.values()) == 0
    (refs / "r0.txt").write_text("another shape")
    res = run(tmp_path / "run", cases, systems)
    assert res.ran == {"reference": 1, "generate": 1, "execute": 0, "render": 1, "score": 1}
    after = rows_by(tmp_path / "run")
    assert after[("c0", "sys", 1)]["chamfer_l1"] != before[("c0", "sys", 1)]["chamfer_l1"]
    assert after[("c1", "sys", 1)] == before[("c1", "sys", 1)]


def test_attempts_are_pipelines_of_their_own(tmp_path: Path) -> None:
    cases = [Case(id=f"c{i}") for i in range(3)] + [Case(id="badref1")]
    systems = {
        "mesh": ({}, Hooks(attempts={"c0": 3, "badref1": 2})),
        "prog": ({"program": True}, Hooks(output="program", attempts={"c1": 2})),
    }
    progress = Recorder()
    res = run(tmp_path / "run", cases, systems, progress=progress)
    # mesh: 3 + 1 + 1 attempts, prog: 1 + 2 + 1; badref1's reference fails, so its 3 pipelines stop there.
    assert res.ran == {"reference": 4, "generate": 9, "execute": 4, "render": 9, "score": 9}
    # The totals shown while running end up equal to the work done.
    assert progress.totals == progress.updates == {k: v for k, v in res.ran.items() if v}
    rows = rows_by(tmp_path / "run")
    assert sorted(a for (c, s, a) in rows if (c, s) == ("c0", "mesh")) == [1, 2, 3]
    assert sorted(a for (c, s, a) in rows if (c, s) == ("badref1", "mesh")) == [1, 2]
    assert all(rows[("badref1", "mesh", a)]["error_class"] == "reference_error" for a in (1, 2))
    # Each attempt is its own candidate (the stand-in writes the attempt into it): its own score.
    assert len({rows[("c0", "mesh", a)]["chamfer_l1"] for a in (1, 2, 3)}) == 3
    with Store(tmp_path / "run", readonly=True) as store:
        counts = stage_progress(store)
        gen = store.get("c0", "mesh", 3, "generate")
    assert gen is not None and (tmp_path / "run" / gen.artifacts["mesh"]).read_text().startswith(
        "mesh:mesh:c0#3:"
    )
    assert counts[("generate", "mesh")] == {"done": 5, "failed": 0, "left": 0}
    assert counts[("score", "prog")] == {"done": 4, "failed": 0, "left": 0}
    assert sum(run(tmp_path / "run", cases, systems).ran.values()) == 0
    # Fewer attempts later: the results follow the latest plan.
    systems["mesh"] = ({}, Hooks(attempts={"badref1": 2}))
    assert sum(run(tmp_path / "run", cases, systems).ran.values()) == 0
    assert sorted(a for (c, s, a) in rows_by(tmp_path / "run") if (c, s) == ("c0", "mesh")) == [1]


def test_progress_totals_follow_what_turns_out_to_apply(tmp_path: Path) -> None:
    # "any" output turning out a program, a failed generate, a case without a reference, a rerun.
    cases = [Case(id="c0"), Case(id="missing1"), Case(id="noref1"), Case(id="badref1")]
    systems = {
        "any": ({"program": True, "fail": ["missing1"]}, Hooks(output="any")),
        "mesh": ({}, Hooks(output="mesh")),
    }
    for _ in range(2):
        progress = Recorder()
        res = run(tmp_path / "run", cases, systems, progress=progress)
        done = {k: res.ran[k] + res.skipped[k] for k in res.ran}
        assert progress.totals == progress.updates == {k: v for k, v in done.items() if v}


def _engine(cases: list[Case], systems: list[str], suite: str = "photos") -> Engine:
    return Engine(
        "unused",
        [CaseEntry(key=c.id, case=c, suite=suite) for c in cases],
        [SystemSpec(name=s, label=s) for s in systems],
        PROTOCOL,
        fingerprint={"name": "default", "hash": "t"},
    )


def test_systems_that_need_references_are_refused_on_suites_without(tmp_path: Path) -> None:
    photos = [Case(id=f"p{i}", image=f"p{i}.jpg") for i in range(3)]
    with pytest.raises(
        ConfigError, match=r"system 'oracle' needs a reference mesh, but suite 'photos' has none"
    ):
        preflight(_engine(photos, ["oracle", "bbox"]))
    some = [Case(id="r0", ref_mesh="r0.glb"), Case(id="r1", ref_code="x", ref_code_lang="cadquery"), *photos]
    warnings = preflight(_engine(some, ["oracle"]))
    assert warnings == [
        "system 'oracle' needs a reference mesh: 3 of 5 cases of suite 'photos' have none (e.g. 'p0'); they will fail"
    ]


def test_system_preflight_warnings_are_returned_and_attempts_checked(tmp_path: Path) -> None:
    eng = Engine(
        tmp_path,
        [CaseEntry(key="c0", case=Case(id="c0"), suite="t")],
        [SystemSpec(name="standin", label="mine")],
        PROTOCOL,
        fingerprint={"name": "default", "hash": "t"},
        system_objects={"mine": Hooks(warnings=("0 of 1 cases have a file; 2 files match no id",))},
        needs_reference={"mine": False},
    )
    assert preflight(eng) == ["system 'mine': 0 of 1 cases have a file; 2 files match no id"]
    bad = Engine(
        tmp_path,
        [CaseEntry(key="c0", case=Case(id="c0"), suite="t")],
        [SystemSpec(name="standin", label="mine")],
        PROTOCOL,
        fingerprint={"name": "default", "hash": "t"},
        system_objects={"mine": Hooks(attempts={"c0": 0})},
        needs_reference={"mine": False},
    )
    with pytest.raises(ConfigError, match=r"attempts\('c0'\) = 0"):
        preflight(bad)


@pytest.mark.parametrize(("folder_mode", "file_mode"), [(0o755, 0o644), (0o700, 0o600), (0o750, 0o640)])
def test_artifacts_never_keep_wider_permissions_than_the_run_folder(
    tmp_path: Path, folder_mode: int, file_mode: int
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(folder_mode)
    store = ArtifactStore(run_dir)
    user = tmp_path / "user.glb"
    user.write_bytes(b"user file")
    user.chmod(0o4777)  # setuid, world-writable, executable
    copied = run_dir / store.put(user)
    scratch = run_dir / "tmp"
    scratch.mkdir()
    made = scratch / "made.glb"
    made.write_bytes(b"a stage copied a user file with its mode")
    made.chmod(0o2777)
    moved = run_dir / store.put(made, move=True)
    for p in (copied, moved):
        assert stat.S_IMODE(p.stat().st_mode) == file_mode, oct(p.stat().st_mode)
    assert stat.S_IMODE(user.stat().st_mode) == 0o4777  # the user's file is left alone
