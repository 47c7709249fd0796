"""``gen3deval run`` end to end with adversarial candidates (issue 9): a ``files`` system whose CadQuery
programs try to read the suite's ground truth from disk and run it. They must not score like the
oracle; the run finishes and the honest candidate is scored."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cadquery")

from gen3deval.cli import main
from gen3deval.report import read_results

# Three cases whose ground truths differ clearly in shape (IoU between them is far from 1).
TRUTHS = {
    "ring": "import cadquery as cq\nsolid = cq.Workplane('XY').circle(2.0).circle(1.2).extrude(0.6)\n",
    "wedge": "import cadquery as cq\nsolid = cq.Workplane('XY').polyline([(0,0),(4,0),(0,1.5)]).close().extrude(1.0)\n",
    "tower": "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1, 3).faces('>Z').workplane().box(2, 2, 0.3)\n",
}
REPO = Path(__file__).resolve().parents[1]
PROTOCOL = "{name: gencad, samples: 3000, iou_resolution: 40, render_size: 96}"

# Reads the suite file (its path is known to the attacker), finds its own case and runs the truth.
# Two routes: the old tripwire bypass (replace os.path.realpath: the hook checked nothing while
# re-entered), and a plain open.
ATTACK = """
import json, os, posixpath, sys
SUITE, CASE = {suite!r}, {case!r}
stolen = []
def grab():
    for line in open(SUITE):
        row = json.loads(line)
        if str(row['question_id']) == CASE:
            stolen.append(row['ground_truth'])
def _evil(p, *a, **k):
    if not stolen:
        try:
            grab()
        except BaseException:
            pass
    return sys.prefix
{bypass}
try:
    open(sys.prefix + '/gen3deval-nonexistent')
except BaseException:
    pass
if not stolen:
    grab()
ns = {{}}
exec(stolen[0], ns)
solid = ns['solid']
"""


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", *argv, "--quiet"])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def suite_dir() -> Iterator[Path]:
    """A folder beside the checkout's sources, not under /tmp: like the shared data (/work/shared/data)
    it is world-readable host disk that the old sandbox left visible (its private tmpfs hid /tmp only)."""
    folder = Path(tempfile.mkdtemp(prefix=".adversarial-", dir=REPO))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_files_candidate_cannot_score_the_ground_truth(tmp_path: Path, suite_dir: Path) -> None:
    os.chmod(suite_dir, 0o755)
    suite = suite_dir / "cases.jsonl"
    suite.write_text(
        "".join(
            json.dumps({"question_id": cid, "text": f"a {cid}", "ground_truth": code, "image": f"{cid}.png"})
            + "\n"
            for cid, code in TRUTHS.items()
        )
    )
    os.chmod(suite, 0o644)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    bypass = "os.path.realpath = posixpath.realpath = _evil"
    (outputs / "ring.py").write_text(ATTACK.format(suite=str(suite), case="ring", bypass=bypass))
    (outputs / "wedge.py").write_text(ATTACK.format(suite=str(suite), case="wedge", bypass=""))
    # Honest: a plain cylinder (not the ring): executable and scored.
    (outputs / "tower.py").write_text(
        "import cadquery as cq\nsolid = cq.Workplane('XY').circle(1).extrude(3)\n"
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"suite: gencad:{suite}\nsystems: [oracle, {{name: files, settings: {{dir: outputs}}}}]\n"
        f"protocol: {PROTOCOL}\nout: run\njobs: 2\n"
    )
    code, _out, err = _run_cli(str(spec))
    assert code == 0, err
    rows: dict[tuple[str, str], dict[str, Any]] = {
        (r["case"], r["system"]): r for r in read_results(tmp_path / "run" / "results.jsonl")
    }
    assert len(rows) == 6
    for cid in TRUTHS:
        oracle = rows[(cid, "oracle")]
        assert oracle["executable"] and oracle["best_iou"] == pytest.approx(1.0, abs=1e-6), oracle
    for cid in ("ring", "wedge"):
        r = rows[(cid, "files")]
        # Not the oracle's score: the program could not read the suite file.
        assert not r["executable"], f"{cid}: the candidate read the ground truth ({r.get('best_iou')})"
        assert r["error_class"] in ("sandbox_violation", "runtime"), r
    honest = rows[("tower", "files")]
    assert honest["executable"] and honest["best_iou"] is not None and honest["best_iou"] < 0.95
