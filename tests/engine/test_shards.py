"""Sharded runs (``run --shard I/N``) and ``gen3deval merge``: real runs of the built-in quickstart suite
(real stages, store, renderer) split 3 ways and merged must equal the unsharded run, bit for bit."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gen3deval.cli import main
from gen3deval.engine.shards import select, shard_name, shard_of
from gen3deval.engine.store import Store
from gen3deval.report import read_results

# Small but real: fewer samples, a coarse IoU grid and small renders keep each run in seconds.
PROTOCOL = "{name: default, samples: 2000, iou_resolution: 32, render_size: 64}"
LIMIT = 4
N = 3


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _cube_obj(size: float) -> str:
    h = size / 2
    v = [(x, y, z) for x in (-h, h) for y in (-h, h) for z in (-h, h)]
    faces = [(1, 3, 4, 2), (5, 6, 8, 7), (1, 2, 6, 5), (3, 7, 8, 4), (1, 5, 7, 3), (2, 4, 8, 6)]
    return "".join(f"v {a} {b} {c}\n" for a, b, c in v) + "".join(
        f"f {a} {b} {c} {d}\n" for a, b, c, d in faces
    )


def _results(run_dir: Path) -> list[dict[str, Any]]:
    rows = read_results(run_dir / "results.jsonl")
    return sorted(
        ({k: v for k, v in r.items() if k != "timings"} for r in rows),
        key=lambda r: (r["case"], r["system"], r["attempt"]),
    )


def _summary(run_dir: Path) -> dict[str, Any]:
    s = json.loads((run_dir / "summary.json").read_text())
    for key in ("run_id", "created", "unfinished"):
        s["meta"].pop(key, None)
    return s


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The unsharded run and its three shards (spec: quickstart, 6 cases, oracle + bbox + a ``files``
    system with two attempts on half the cases); {"spec", "full", "shards", "ran", "cases"}."""
    folder = tmp_path_factory.mktemp("shards")
    from gen3deval.suites import load_suite

    cases = [c.id for c in load_suite("quickstart", limit=LIMIT, seed=0).cases]
    outputs = folder / "outputs"
    outputs.mkdir()
    for k, cid in enumerate(cases):
        if k % 2:
            (outputs / cid).mkdir()
            (outputs / cid / "1.obj").write_text(_cube_obj(0.5))
            (outputs / cid / "2.obj").write_text(_cube_obj(0.8))
        else:
            (outputs / f"{cid}.obj").write_text(_cube_obj(0.6))
    spec = folder / "spec.yaml"
    spec.write_text(
        f"suite: quickstart\nlimit: {LIMIT}\nprotocol: {PROTOCOL}\njobs: 2\n"
        f"systems: [oracle, bbox, 'files:dir={outputs}']\n"
    )
    ran: dict[str, int] = {}
    code, _out, err = _cli("run", str(spec), "--out", str(folder / "full"), "--quiet")
    assert code == 0, err
    ran["full"] = int(err.split("stages: ")[1].split(" ran")[0])
    shards = []
    for i in range(1, N + 1):
        out = folder / shard_name((i, N))
        code, _out, err = _cli("run", str(spec), "--out", str(out), "--shard", f"{i}/{N}", "--quiet")
        assert code == 0, err
        assert "unfinished" not in err  # a shard's report counts only its own pipelines
        ran[out.name] = int(err.split("stages: ")[1].split(" ran")[0])
        shards.append(out)
    return {
        "spec": spec,
        "folder": folder,
        "full": folder / "full",
        "shards": shards,
        "ran": ran,
        "cases": cases,
    }


# -- assignment -----------------------------------------------------------------------------------------


def test_shard_of_is_sha256_of_case_tab_system() -> None:
    # An independent computation of the documented rule, plus pinned values: a change of the rule (or
    # a salted hash()) would move pipelines between shards of folders already run.
    for case, system, n in [("a", "oracle", 3), ("kaykit_dungeon_chest", "files@x", 8), ("s/1", "", 64)]:
        d = hashlib.sha256(f"{case}\t{system}".encode()).digest()
        assert shard_of(case, system, n) == int.from_bytes(d[:8], "big") % n + 1
    assert [shard_of("case1", "oracle", 3), shard_of("case2", "oracle", 3), shard_of("case1", "bbox", 7)] == [
        int.from_bytes(hashlib.sha256(b"case1\toracle").digest()[:8], "big") % 3 + 1,
        int.from_bytes(hashlib.sha256(b"case2\toracle").digest()[:8], "big") % 3 + 1,
        int.from_bytes(hashlib.sha256(b"case1\tbbox").digest()[:8], "big") % 7 + 1,
    ]
    assert shard_of("x", "y", 1) == 1


def test_shards_partition_the_pairs_and_are_balanced() -> None:
    cases = [f"obj_{i:04d}" for i in range(1012)]
    systems = ["oracle", "bbox", "gpt", "claude", "files@mine"]
    for n in (3, 8, 64):
        parts = [select(cases, systems, (i, n)) for i in range(1, n + 1)]
        union = set().union(*parts)
        assert union == select(cases, systems, None) and sum(map(len, parts)) == len(union)  # disjoint
        mean = len(union) / n
        # sha256 spreads pairs like a fair die: ~4 standard deviations of a binomial count.
        spread = 4 * (mean * (1 - 1 / n)) ** 0.5
        assert all(abs(len(p) - mean) <= spread for p in parts), [len(p) for p in parts]
    # Adding a case or a system moves no pair to another shard (resumed shard folders stay valid).
    before = select(cases[:500], systems[:3], (2, 8))
    after = select(cases, systems, (2, 8))
    assert before == {p for p in after if p[0] in cases[:500] and p[1] in systems[:3]}


# -- sharded runs + merge -------------------------------------------------------------------------------


def test_each_shard_runs_only_its_pipelines(runs: dict[str, Any]) -> None:
    with Store(runs["full"], readonly=True) as store:
        full = store.all()
    seen: Counter[tuple[str, str, int, str]] = Counter()
    for i, shard in enumerate(runs["shards"], 1):
        with Store(shard, readonly=True) as store:
            rows = store.all()
            assert store.get_meta("shard") == [i, N]
        pairs = {(c, s) for c, s, _a, st in rows if st != "reference"}
        assert all(shard_of(c, s, N) == i for c, s in pairs)
        # The references made are exactly those of the cases with a pipeline in this shard.
        assert {c for c, s, _a, st in rows if st == "reference"} == {c for c, _s in pairs}
        # All attempts of a pair go together: the files system's two attempts are both here.
        for c, s in pairs:
            assert {a for cc, ss, a, st in rows if (cc, ss) == (c, s)} == {
                a for cc, ss, a, st in full if (cc, ss) == (c, s)
            }
        seen.update(rows.keys())
    # Every pipeline stage ran in exactly one shard; only reference rows are repeated.
    assert set(seen) == set(full)
    assert {k[3] for k, n in seen.items() if n > 1} == {"reference"}  # cases shared by shards
    assert sum(runs["ran"][s.name] for s in runs["shards"]) == runs["ran"]["full"] + sum(
        n - 1 for n in seen.values()
    )


def test_merge_of_the_shards_equals_the_unsharded_run(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    code, stdout, err = _cli("merge", str(out), *map(str, runs["shards"]))
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == str(out / "report.html")
    assert "unfinished" not in err
    full = _results(runs["full"])
    merged = _results(out)
    assert len(full) == LIMIT * 2 + LIMIT // 2 * 2 + (LIMIT - LIMIT // 2)  # oracle, bbox, files attempts
    assert merged == full  # metric values bit for bit (JSON floats round-trip exactly), artifacts too
    assert _summary(out) == _summary(runs["full"])
    with Store(out, readonly=True) as m, Store(runs["full"], readonly=True) as f:
        assert set(m.all()) == set(f.all())
        assert m.get_meta("shard") is None and "shard" not in m.get_meta("spec")
        assert [d["shard"] for d in m.get_meta("merged_from")] == [[i, N] for i in range(1, N + 1)]
        for rel in {
            p
            for r in m.all().values()
            for v in r.artifacts.values()
            for p in (v if isinstance(v, list) else [v])
        }:
            assert (out / rel).is_file()
    # The merged folder is a normal run folder: resuming it finds every stage done.
    code, _o, err = _cli("run", "--out", str(out), "--quiet")
    assert code == 0, err
    assert "stages: 0 ran" in err


def test_merge_overlapping_folders_keeps_identical_rows_once(runs: dict[str, Any], tmp_path: Path) -> None:
    # The unsharded run and a shard hold the same stages (measured wall times differ): not a conflict.
    out = tmp_path / "merged"
    code, _o, err = _cli("merge", str(out), str(runs["full"]), str(runs["shards"][0]))
    assert code == 0, err
    assert _results(out) == _results(runs["full"])


def test_merge_with_a_missing_shard_reports_unfinished_and_run_completes_it(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    code, _o, err = _cli("merge", str(out), *map(str, runs["shards"][:2]))
    assert code == 0, err
    full = _results(runs["full"])
    missing = [r for r in full if shard_of(r["case"], r["system"], N) == N]
    assert missing
    assert f"warning: {len(missing)} pipelines unfinished" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["unfinished"] == len(missing)
    assert len(_results(out)) == len(full) - len(missing)
    # The merged folder resumes as an unsharded run: it runs exactly the missing pipelines.
    code, _o, err = _cli("run", "--out", str(out), "--quiet")
    assert code == 0, err
    assert _results(out) == full


def test_merge_refuses_different_protocols(runs: dict[str, Any], tmp_path: Path) -> None:
    other = tmp_path / "other"
    spec = runs["spec"].read_text().replace("samples: 2000", "samples: 1500")
    (tmp_path / "spec.yaml").write_text(spec.replace(f"limit: {LIMIT}", "limit: 1"))
    code, _o, err = _cli(
        "run", str(tmp_path / "spec.yaml"), "--out", str(other), "--system", "bbox", "--quiet"
    )
    assert code == 0, err
    out = tmp_path / "merged"
    code, _o, err = _cli("merge", str(out), str(runs["shards"][0]), str(other))
    assert code == 2
    line = err.strip().splitlines()[-1]
    with Store(runs["shards"][0], readonly=True) as a, Store(other, readonly=True) as b:
        ha, hb = a.get_meta("protocol")["hash"], b.get_meta("protocol")["hash"]
    assert "fingerprints differ" in line and str(runs["shards"][0]) in line and str(other) in line
    assert ha in line and hb in line and ha != hb
    assert not out.exists()
    # Same parameters, other software (a fingerprint recorded on another machine): refused too.
    copy = tmp_path / "copy"
    shutil.copytree(runs["shards"][1], copy)
    db = sqlite3.connect(copy / "store.sqlite")
    proto = json.loads(db.execute("SELECT value FROM meta WHERE key = 'protocol'").fetchone()[0])
    proto["hash"] = "0" * len(str(proto["hash"]))
    db.execute("UPDATE meta SET value = ? WHERE key = 'protocol'", (json.dumps(proto),))
    db.commit()
    db.close()
    code, _o, err = _cli("merge", str(out), str(runs["shards"][0]), str(copy))
    assert code == 2 and "fingerprints differ" in err and "0" * 8 in err
    assert not out.exists()


def test_merge_refuses_conflicting_rows_and_damaged_artifacts(runs: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(runs["shards"][0], copy)
    db = sqlite3.connect(copy / "store.sqlite")
    case, system, attempt, value = db.execute(
        "SELECT \"case\", system, attempt, value FROM stages WHERE stage = 'score' LIMIT 1"
    ).fetchone()
    v = json.loads(value)
    v["chamfer_l2"] = v["chamfer_l2"] + 1e-12 if v.get("chamfer_l2") is not None else 1.0
    db.execute(
        "UPDATE stages SET value = ? WHERE \"case\" = ? AND system = ? AND attempt = ? AND stage = 'score'",
        (json.dumps(v), case, system, attempt),
    )
    db.commit()
    db.close()
    out = tmp_path / "merged"
    code, _o, err = _cli("merge", str(out), str(runs["full"]), str(copy))
    assert code == 2 and f"score of {case} {system}" in err and str(copy) in err
    assert not out.exists()
    # An artifact whose bytes no longer match its content-addressed name.
    copy2 = tmp_path / "copy2"
    shutil.copytree(runs["shards"][1], copy2)
    victim = next((copy2 / "artifacts").rglob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"x")
    code, _o, err = _cli("merge", str(out), str(copy2))
    assert code == 2 and "does not match its content hash" in err and victim.name in err
    assert not out.exists()


def test_merge_refuses_an_out_folder_that_is_not_empty(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _o, err = _cli("merge", str(out), *map(str, runs["shards"]))
    assert code == 2 and "exists and is not empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code, _o, err = _cli("merge", str(tmp_path / "m"), str(tmp_path / "nothing"))
    assert code == 2 and "not a run folder" in err


def test_a_shard_folder_cannot_be_resumed_as_another_shard(runs: dict[str, Any]) -> None:
    shard = runs["shards"][0]
    code, _o, err = _cli("run", str(runs["spec"]), "--out", str(shard), "--shard", f"2/{N}", "--quiet")
    assert code == 2 and "was made shard 1/3" in err
    code, _o, err = _cli("run", str(runs["spec"]), "--out", str(runs["full"]), "--shard", f"1/{N}", "--quiet")
    assert code == 2 and "was made without --shard" in err
    # Resuming with the folder alone keeps its shard (from the stored spec): nothing left to run.
    code, _o, err = _cli("run", "--out", str(shard), "--quiet")
    assert code == 0 and "stages: 0 ran" in err
