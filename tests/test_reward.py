"""The CAD reward (gen3deval.reward, `gen3deval reward`): real CadQuery workers, real hostile programs.

The agreement test scores the same programs through the run's own stage functions (reference execution kept
as GLB, candidate execution kept as GLB, the score stage with the gencad protocol) and requires the reward's
metric to be bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("cadquery")

from gen3deval.errors import ConfigError, UserInputError
from gen3deval.execute import sandbox
from gen3deval.reward import DEFAULT_PENALTIES, RewardReferenceError, cad_reward, completion_text
from testdata import GENCAD

BOX = "import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3)\n"
BOX_HALF = "import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 1.5)\n"
# Fenced, as models answer (unfenced, extract_code's bare-code rule drops a trailing ``pass`` line).
LOOP = "```python\nimport cadquery as cq\nwhile True:\n    pass\n```"
ALL_MINUS_ONE = dict.fromkeys(DEFAULT_PENALTIES, -1.0)


def gencad_cases(n: int) -> list[dict]:
    if not GENCAD.exists():
        pytest.skip(f"shared data not found at {GENCAD}")
    return [json.loads(x) for x in GENCAD.read_text().splitlines() if x.strip()][:n]


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: no psutil needed)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _is_cq_worker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"gen3deval.execute.cadquery_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def assert_only_workers(*rewards) -> None:
    """Our CadQuery processes are the reward's warm templates (or the module pools' that made test meshes),
    and none has a child left."""
    from gen3deval.execute import cadquery_pool

    module = [w.proc.pid for p in cadquery_pool._POOLS.values() for w in p._all if w.proc is not None]
    workers = {p for r in rewards for p in r.worker_pids()} | set(module)
    mine = {p for p in _descendants(os.getpid()) if _is_cq_worker(p)}
    assert mine <= workers
    for w in workers:
        assert _descendants(w) == [], "a program's process outlived it"
    for pool in [p for r in rewards for k, p in r._pools.items() if k != "metric"]:
        for w in pool._all:
            if w.info.get("uid") is not None:
                assert sandbox.uid_processes(int(w.info["uid"])) == []


@pytest.fixture(scope="module")
def reward():
    r = cad_reward(workers=2, timeout_s=5, penalties=ALL_MINUS_ONE)
    yield r
    r.close()


# ------------------------------------------------------------------------------------------- agreement ---
def test_agrees_bit_for_bit_with_the_runs_score_stage(reward, tmp_path: Path) -> None:
    """Same programs through the run's stages (execute -> GLB -> score with gencad) vs the reward."""
    from gen3deval.config import PROTOCOLS
    from gen3deval.engine.scoring import stage_score
    from gen3deval.engine.stages import stage_execute, stage_reference

    cases = gencad_cases(3)
    params = PROTOCOLS["gencad"].params()
    cands = [BOX, cases[1]["ground_truth"], cases[2]["ground_truth"].replace("extrude(", "extrude(1.5*", 1)]
    refs = [c["ground_truth"] for c in cases]
    details = reward.score([f"```python\n{c}```" for c in cands], refs)
    for i, (cand, case) in enumerate(zip(cands, cases, strict=True)):
        wd = tmp_path / str(i)
        (wd / "ref").mkdir(parents=True)
        (wd / "cand").mkdir()
        image = wd / "input.png"  # a case with its own image: the reference stage renders nothing
        image.write_bytes(b"")
        case_d = {"id": str(case["question_id"]), "ref_code": case["ground_truth"], "image": str(image)}
        ref = stage_reference({**case_d, "ref_code_lang": "cadquery"}, {**params, "rig": None}, wd / "ref")
        assert ref.status == "done", ref.error
        prog = wd / "cand.py"
        prog.write_text(cand)
        ex = stage_execute(str(prog), "cadquery", params["limits"], wd / "cand")
        assert ex.status == "done", ex.error
        sc = stage_score(ex.files["mesh"], ref.files["mesh"], None, None, params, wd)
        assert details[i].error_class is None, details[i].message
        assert (
            details[i].metric == sc.value["best_iou"]
        )  # exact: the reward rounds vertices as GLB stores them
        assert details[i].reward == details[i].metric
    assert details[1].reward == pytest.approx(1.0, abs=1e-9)  # a program against itself
    assert 0.3 < details[2].reward < 0.9  # one extrude 1.5x longer
    assert reward.last_details == [d.to_dict() for d in details]
    # The metric computed in this process (no metric processes) is the same number.
    with cad_reward(workers=1, metric_processes=False) as inproc:
        again = inproc.score([f"```python\n{c}```" for c in cands], refs)
    assert [d.metric for d in again] == [d.metric for d in details]


def test_box_iou_is_analytic(reward) -> None:
    # Inertia normalisation makes a box and a half-height box different shapes; scale alone cancels.
    scaled = "import cadquery as cq\nsolid = cq.Workplane().box(2, 4, 6)\n"
    d = reward.score([BOX, scaled], [BOX, BOX])
    assert d[0].reward == pytest.approx(1.0, abs=1e-9)
    assert d[1].reward == pytest.approx(1.0, abs=1e-9)  # inertia normalisation: size does not matter


def test_mesh_path_reference_equals_program_reference(reward, tmp_path: Path) -> None:
    from gen3deval.execute import run
    from gen3deval.mesh.io import save_mesh

    res = run(BOX_HALF, "cadquery", role="reference")
    path = save_mesh(res.mesh, tmp_path / "ref.glb")
    a = reward.score([BOX], [BOX_HALF])[0]
    b = reward.score([BOX], [str(path)])[0]
    assert a.error_class is None and b.error_class is None
    assert a.metric == b.metric
    assert a.metric < 0.99


def test_trl_signature_and_conversational_completions(reward) -> None:
    convo = [
        {"role": "user", "content": "make a box"},
        {"role": "assistant", "content": f"```python\n{BOX}```"},
    ]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": BOX}]}]
    out = reward(
        prompts=["p"] * 3,
        completions=[convo, parts, "Sorry, I cannot do that."],
        ground_truth=[BOX] * 3,
        completion_ids=[[1], [2], [3]],
        trainer_state=None,
    )
    assert out[:2] == [pytest.approx(1.0, abs=1e-9)] * 2
    assert out[2] == -1.0
    assert reward.last_details[2]["error_class"] == "no_code"
    assert reward.__name__ == "cad_best_iou"
    with pytest.raises(ConfigError, match="no reference column 'ground_truth'"):
        reward(prompts=["p"], completions=[BOX], answer=[BOX])
    assert completion_text(None) == "" and completion_text([{"role": "assistant"}]) == ""


def test_lower_is_better_metric_is_negated() -> None:
    with cad_reward(metric="chamfer_l2", workers=1, timeout_s=5) as r:
        same, other = r.score([BOX, BOX_HALF], [BOX, BOX])
    assert same.metric is not None and other.metric is not None
    assert same.reward == -same.metric and other.reward == -other.metric
    assert other.metric > same.metric >= 0


def test_bad_settings_are_clear() -> None:
    with pytest.raises(ConfigError, match="unknown error class 'oops'"):
        cad_reward(penalties={"oops": -1})
    with pytest.raises(UserInputError, match="unknown metric 'iou'"):
        cad_reward(metric="iou")
    with pytest.raises(ConfigError, match="timeout_s"):
        cad_reward(timeout_s=0)
    with pytest.raises(ConfigError, match="aligned"):
        cad_reward().score([BOX], [])


# ------------------------------------------------------------------------------------------ references ---
def test_bad_reference_is_an_error_naming_the_row(reward, tmp_path: Path) -> None:
    with pytest.raises(
        RewardReferenceError, match=r"reference of row 1: the reference program failed \(runtime\)"
    ):
        reward.score([BOX, BOX], [BOX, "import cadquery as cq\nraise ValueError('bad ground truth')\n"])
    with pytest.raises(RewardReferenceError, match=r"ground_truth of row 0: reference mesh .*missing\.glb"):
        reward(completions=[BOX], ground_truth=[str(tmp_path / "missing.glb")])
    with pytest.raises(RewardReferenceError, match="row 0: expected a CadQuery program"):
        reward.score([BOX], [""])


# ----------------------------------------------------------------------------------------------- hostile ---
def test_hostile_programs_get_the_penalty_and_leave_no_process(reward, tmp_path: Path) -> None:
    secret = tmp_path / "reference.glb"
    from gen3deval.execute import run
    from gen3deval.mesh.io import save_mesh

    save_mesh(run(BOX, "cadquery", role="reference").mesh, secret)
    hostile = {
        "fork bomb": "import cadquery as cq, os\nwhile True:\n    os.fork()\n",
        "infinite loop": "import cadquery as cq\nwhile True:\n    pass\n",
        "passwd": "import cadquery as cq\ns = open('/etc/passwd').read()\nsolid = cq.Workplane().box(1, 2, 3)\n",
        "reference": f"import cadquery as cq\nd = open({str(secret)!r}, 'rb').read()\nsolid = cq.Workplane().box(1, 2, 3)\n",
        "os.system": "import cadquery as cq, os\nos.system('sleep 100 &')\nsolid = cq.Workplane().box(1, 2, 3)\n",
        "subprocess": "import cadquery as cq, subprocess\nsubprocess.Popen(['sleep', '100'])\nsolid = cq.Workplane().box(1, 2, 3)\n",
        "syntax": "import cadquery as cq\nsolid = (\n",
        "exit": "import cadquery as cq, os\nos._exit(0)\n",
    }
    t0 = time.monotonic()
    details = reward.score([f"```python\n{p}```" for p in hostile.values()], [BOX] * len(hostile))
    assert time.monotonic() - t0 < 60
    for name, d in zip(hostile, details, strict=True):
        assert d.error_class is not None, (name, d)
        assert d.reward == -1.0, (name, d)
    by = dict(zip(hostile, details, strict=True))
    assert by["infinite loop"].error_class == "timeout"
    assert by["syntax"].error_class == "syntax"
    assert by["passwd"].error_class == "sandbox_violation"
    assert by["reference"].error_class == "sandbox_violation"
    assert by["os.system"].error_class == "sandbox_violation"
    assert_only_workers(reward)


def test_close_leaves_no_process() -> None:
    r = cad_reward(workers=1, timeout_s=3)
    r.score([BOX, LOOP], [BOX, BOX])
    pids = r.worker_pids()
    assert len(pids) == 2  # one candidate and one reference worker
    assert all(_descendants(p) == [] for p in pids)
    pids += r.metric_pids()
    assert len(pids) == 3  # and one metric process
    r.close()
    assert r.worker_pids() == [] and r.metric_pids() == []
    assert not set(pids) & set(_descendants(os.getpid()))


@pytest.mark.slow
def test_batch_of_64_with_loops_is_bounded(reward) -> None:
    n, workers, timeout = 64, 2, 1.0
    completions = [LOOP if i % 8 == 0 else BOX for i in range(n)]
    with cad_reward(workers=workers, timeout_s=timeout) as r:
        r.warm()
        r.score([BOX], [BOX])  # reference cached and workers up: time the batch alone
        t0 = time.monotonic()
        d = r.score(completions, [BOX] * n)
        took = time.monotonic() - t0
        assert took < timeout * math.ceil(n / workers) + 20
        assert [x.error_class for x in d] == ["timeout" if c == LOOP else None for c in completions]
        # A batch deadline: everything after it gets the timeout penalty, and the call ends near it.
        r2 = cad_reward(workers=workers, timeout_s=30, batch_timeout_s=2.0, penalties={"timeout": -0.5})
        try:
            r2.warm()
            r2.score([BOX], [BOX])
            t0 = time.monotonic()
            d2 = r2.score([LOOP] * 8 + [BOX] * 8, [BOX] * 16)
            took2 = time.monotonic() - t0
            assert took2 < 2.0 + 5.0
            assert all(x.error_class == "timeout" and x.reward == -0.5 for x in d2[:8])
            assert any(x.error_class == "timeout" for x in d2[8:])  # never started: the deadline had passed
            assert_only_workers(reward, r, r2)  # the module fixture's workers may be up too
        finally:
            r2.close()


# ---------------------------------------------------------------------------------------------------- CLI ---
def test_cli_scores_a_file_and_names_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gen3deval.cli import main

    src = tmp_path / "completions.jsonl"
    lines = [
        json.dumps({"id": "a", "completion": f"```python\n{BOX}```", "ground_truth": BOX}),
        "{not json",
        json.dumps({"id": "b", "completion": "no code"}),
        "",
        json.dumps(
            {"id": "c", "completion": BOX, "ground_truth": "import cadquery as cq\nraise ValueError('x')\n"}
        ),
        json.dumps({"question_id": 7, "completion": BOX_HALF, "ground_truth": BOX}),
    ]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "rewards.jsonl"
    rc = main(["reward", str(src), "--out", str(out), "--workers", "1", "--penalty", "no_code=-2"])
    err = capsys.readouterr().err
    assert rc == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 5, 6]
    assert rows[0]["id"] == "a" and rows[0]["reward"] == pytest.approx(1.0, abs=1e-9)
    assert rows[1]["error_class"] == "bad_line" and f"{src}:2: not JSON" in rows[1]["message"]
    assert rows[2]["error_class"] == "bad_line" and "no 'ground_truth' column" in rows[2]["message"]
    assert rows[3]["error_class"] == "reference_error" and rows[3]["reward"] is None
    assert f"{src}:5: the reference program failed (runtime)" in rows[3]["message"]
    assert rows[4]["id"] == 7 and 0 < rows[4]["reward"] < 0.99
    assert f"{src}:2:" in err and "VSR 1.000" in err and "2 scored, 3 bad" in err
    assert main(["reward", str(tmp_path / "nope.jsonl")]) == 2
