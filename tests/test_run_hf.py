"""``gen3deval run --system hf`` end to end: a tiny random vision-language model (built in code, loaded from a
folder) on 3 ``gencad100`` cases with k = 2 attempts. Its answers are random text: every attempt is a
``no_code`` row, the run finishes, and VSR is 0."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def _cmd() -> list[str]:
    exe = Path(sys.executable).with_name("gen3deval")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gen3deval.cli"]


@pytest.mark.slow
def test_hf_gencad_two_attempts_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    from gen3deval.models.testing import make_random_vlm

    model = make_random_vlm(tmp_path / "tiny-vlm", seed=0)
    out = tmp_path / "run"
    args = [
        *_cmd(),
        "run",
        "--suite",
        f"gencad:{shared_data / 'gencad100' / 'cases.jsonl'}",
        "--limit",
        "3",
        "--protocol",
        "gencad",
        "--system",
        f"hf:model={model},attempts=2,device=cpu,batch_size=4",
        "--out",
        str(out),
        "--jobs",
        "2",
        "--quiet",
    ]
    env = dict(os.environ, HOME=str(tmp_path), HF_HUB_OFFLINE="1", GEN3DEVAL_SANDBOX="basic")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    db = sqlite3.connect(out / "store.sqlite")
    rows = db.execute(
        "SELECT \"case\", attempt, status, error_class, value FROM stages WHERE stage='generate' AND system='hf'"
    ).fetchall()
    db.close()
    assert sorted(a for _, a, _, _, _ in rows) == [1, 1, 1, 2, 2, 2]  # 3 cases x attempts 1 and 2
    assert {(s, e) for _, _, s, e, _ in rows} == {("failed", "no_code")}
    # Every answer is kept (a failed one too), and attempt 2 answered a revision prompt quoting attempt 1's.
    db = sqlite3.connect(out / "store.sqlite")
    arts = db.execute(
        "SELECT \"case\", attempt, artifacts FROM stages WHERE stage='generate' AND system='hf'"
    ).fetchall()
    db.close()
    answers = {(c, a): (out / json.loads(art)["answer"]).read_text() for c, a, art in arts}
    for case in {c for c, _ in answers}:
        assert answers[(case, 1)] != answers[(case, 2)]
    summary = json.loads((out / "summary.json").read_text())
    (hf,) = [s for s in summary["systems"] if s["system"] == "hf"]
    assert hf["n"] == 3 and hf["n_executable"] == 0 and hf["vsr"]["value"] == 0.0
    assert hf["errors"] == {"no_code": 3}
    # The fingerprint records the model's weights and the prompt (a new checkpoint makes runs incomparable).
    from gen3deval.models.clip import weights_sha256

    db = sqlite3.connect(out / "store.sqlite")
    (fp,) = db.execute("SELECT value FROM meta WHERE key = 'protocol'").fetchone()
    db.close()
    entry = json.loads(fp)["models"]["hf"]
    assert entry["weights_sha256"] == weights_sha256(model) and entry["adapter_sha256"] is None
    assert entry["prompt"] == "threejs/cadquery" and entry["prompt_version"].count("/") == 1
