"""Nothing a user types gives a traceback: SIGTERM, closed pipes, bad paths, unexpected errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from gen3deval.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}


def _cli(*argv: str, cwd: Path | None = None, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gen3deval", *argv],
        cwd=cwd,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[call-overload]
    )


def _meshes(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        trimesh.creation.box(extents=(1.0, 1.0 + 0.1 * i, 0.5)).export(folder / f"box{i:02d}.glb")
    return folder


def test_sigterm_stops_a_run_like_ctrl_c_and_says_how_to_resume(tmp_path: Path) -> None:
    suite = _meshes(tmp_path / "meshes", 12)
    run_dir = tmp_path / "run"
    argv = ["run", "--suite", f"meshes:{suite}", "--system", "oracle", "--out", str(run_dir)]
    proc = _cli(*argv, "--quiet", "--jobs", "1")
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # wait until the first stage has been committed
        lines.append(line)
        if line.startswith("[reference"):
            break
    proc.send_signal(signal.SIGTERM)
    _out, rest = proc.communicate(timeout=60)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"terminated; resume with: gen3deval run --out {run_dir}"
    # The stopped run is resumed by exactly that command, reusing what was committed.
    done = subprocess.run(
        [sys.executable, "-m", "gen3deval", "run", "--out", str(run_dir), "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "already finished" in done.stderr and " 0 already finished;" not in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("argv", [["list"], ["--help"], ["list", "metrics"]])
def test_a_closed_output_pipe_is_quiet(argv: list[str]) -> None:
    """`gen3deval list | head -1`: the reader leaves first; no BrokenPipeError traceback."""
    r, w = os.pipe()
    os.close(r)  # nobody will read
    proc = subprocess.run(
        [sys.executable, "-m", "gen3deval", *argv], env=ENV, stdout=w, stderr=subprocess.PIPE, timeout=60
    )
    os.close(w)
    assert proc.stderr.decode() == ""
    # argparse's own --help printing ignores the closed pipe itself (exit 0); our commands exit 141.
    assert proc.returncode == (0 if argv == ["--help"] else 141)


def test_a_closed_pipe_mid_output_through_head(tmp_path: Path) -> None:
    # The real shell form, with output large enough not to fit in the pipe buffer at once.
    sh = f"{sys.executable} -m gen3deval list | head -1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", sh], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("suite kinds")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert proc.returncode in (0, 141)


def test_os_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mesh = tmp_path / "m.glb"
    trimesh.creation.box().export(mesh)
    afile = tmp_path / "afile"
    afile.write_text("x")
    # --out naming a file (render) and a run folder that is a file (report --out).
    assert main(["render", str(mesh), "--out", str(afile), "--size", "32"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gen3deval.commands.list_cmd as list_cmd

    def boom(args: object) -> int:
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr(list_cmd, "run", boom)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: something we did not foresee" in err
    monkeypatch.setenv("GEN3DEVAL_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["list"])


def test_sigterm_handler_is_restored_after_a_command() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert main(["list", "rigs"]) == 0
    assert signal.getsignal(signal.SIGTERM) == before
