"""``gen3deval exec``: through ``cli.main`` and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gen3deval.cli import main
from gen3deval.errors import DependencyError

threejs = pytest.importorskip("gen3deval.execute.threejs")

BOX_JS = """function createObject(THREE) {
  const m = new THREE.Mesh(new THREE.BoxGeometry(1, 2, 3), new THREE.MeshStandardMaterial({ color: 0x00ff00 }));
  m.position.x = 1;
  console.log('made a box');
  return m;
}
"""


@pytest.fixture(scope="module", autouse=True)
def _runtime() -> None:
    try:
        threejs.runtime()
    except DependencyError as exc:
        pytest.skip(str(exc))


def exec_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    """Run ``gen3deval exec ... --json``; the exit status must be 0 exactly when the program is executable."""
    code = main(["exec", *args, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == (0 if out["executable"] else 1), (code, out["error_class"])
    return out


def test_json_output_of_a_good_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "box.js"
    prog.write_text(BOX_JS)
    out = exec_json(capsys, str(prog))
    assert out["executable"] is True and out["error_class"] is None and out["message"] == ""
    assert out["language"] == "threejs"  # from the suffix
    assert out["faces"] == 12
    assert out["watertight"] is True  # BoxGeometry splits corners per side; welded it is closed
    np.testing.assert_allclose(out["bounds"], [[0.5, -1, -1.5], [1.5, 1, 1.5]], atol=1e-6)
    assert out["stdout"] == "made a box"
    assert out["wall_s"] > 0 and out["peak_mb"] > 0
    assert out["limits"]["wall_s"] == 10.0 and out["limits"]["network"] is False
    assert out["sandbox"]["network"] in ("netns", "userns+netns", "not isolated")
    for key in (
        "executable",
        "error_class",
        "message",
        "wall_s",
        "peak_mb",
        "faces",
        "watertight",
        "limits",
        "sandbox",
    ):
        assert key in out


def test_out_writes_the_mesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gen3deval.mesh.io import load_mesh

    prog = tmp_path / "box.js"
    prog.write_text(BOX_JS)
    glb = tmp_path / "out" / "box.glb"
    out = exec_json(capsys, str(prog), "--out", str(glb))
    assert out["out"] == str(glb)
    mesh = load_mesh(glb)
    assert mesh.n_faces == 12
    np.testing.assert_allclose(mesh.bounds, [[0.5, -1, -1.5], [1.5, 1, 1.5]], atol=1e-6)
    assert mesh.materials[0].base_color[:3] == pytest.approx((0, 1, 0), abs=1 / 255)


def test_failing_program_exits_1_with_its_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "bad.js"
    prog.write_text("function createObject(THREE) {\n  return new THREE.Mesh(\n}\n")
    assert main(["exec", str(prog), "--json", "--out", str(tmp_path / "never.glb")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["executable"] is False and out["error_class"] == "syntax"
    assert out["faces"] == 0 and out["watertight"] is False and out["out"] is None
    assert not (tmp_path / "never.glb").exists()


def test_timeout_and_memory_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "loop.js"
    prog.write_text("function createObject(THREE) { for (;;) {} }\n")
    out = exec_json(capsys, str(prog), "--timeout", "1", "--memory-mb", "1024")
    assert out["error_class"] == "timeout"
    assert out["limits"]["wall_s"] == 1.0 and out["limits"]["cpu_s"] == 1.0
    assert out["limits"]["memory_mb"] == 1024
    assert out["wall_s"] < 2.5


def test_model_answer_file_is_extracted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answer = tmp_path / "answer.md"
    answer.write_text(f"Here is the object:\n\n```javascript\n{BOX_JS}```\n\nEnjoy!\n")
    out = exec_json(capsys, str(answer), "--lang", "threejs")
    assert out["executable"] is True and out["faces"] == 12
    empty = tmp_path / "refusal.txt"
    empty.write_text("Sorry, I cannot write code for that.")
    out = exec_json(capsys, str(empty), "--lang", "threejs")
    assert out["executable"] is False and out["error_class"] == "no_code"


def test_human_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "box.js"
    prog.write_text(BOX_JS)
    assert main(["exec", str(prog)]) == 0
    text = capsys.readouterr().out
    assert "executable, 12 faces, watertight: yes" in text
    assert "made a box" in text
    bad = tmp_path / "nothing.js"
    bad.write_text("const x = 1;\n")
    assert main(["exec", str(bad)]) == 1
    assert "NOT executable [no_geometry]" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["exec", "/nonexistent/prog.js"], "file not found"),
        (["exec", "{tmp}/prog.rb"], "--lang"),
        (["exec", "{tmp}/prog.js", "--timeout", "0"], "--timeout"),
        (["exec", "{tmp}/prog.js", "--memory-mb", "100"], "memory_mb"),
    ],
)
def test_bad_usage_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    for name in ("prog.rb", "prog.js"):
        (tmp_path / name).write_text(BOX_JS)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_language_is_an_argparse_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "p.js"
    prog.write_text(BOX_JS)
    with pytest.raises(SystemExit) as exc:
        main(["exec", str(prog), "--lang", "rust"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_real_subprocess(tmp_path: Path) -> None:
    prog = tmp_path / "box.js"
    prog.write_text(BOX_JS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [sys.executable, "-m", "gen3deval", "exec", str(prog), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["executable"] is True and out["faces"] == 12
    assert proc.stderr == ""
    # A program that is not executable: the same JSON, exit status 1 (shell scripts can test it).
    bad = tmp_path / "empty.js"
    bad.write_text("function createObject(THREE) { return null; }\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gen3deval", "exec", str(bad), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["error_class"] == "no_geometry"
    assert proc.stderr == ""


@pytest.mark.slow
def test_cadquery_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dispatch to the CadQuery executor (slow: starts a CadQuery worker). 1 x 2 x 3 box, +Z up -> +Y up."""
    prog = tmp_path / "part.py"
    prog.write_text("import cadquery as cq\nresult = cq.Workplane('XY').box(1, 2, 3)\n")
    out = exec_json(capsys, str(prog))
    assert out["language"] == "cadquery"
    assert out["executable"] is True, out["message"]
    assert out["watertight"] is True
    # (x, y, z) -> (x, z, -y): y extent 2 becomes z, z extent 3 becomes y.
    np.testing.assert_allclose(out["bounds"], [[-0.5, -1.5, -1], [0.5, 1.5, 1]], atol=1e-6)
