"""A missing executor runtime is an environment error (DependencyError naming the fix), never a program's
failure: checked for real by taking away node, three's npm package, or cadquery."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from gen3deval.cli import main
from gen3deval.errors import DependencyError
from gen3deval.execute import EXECUTORS, check_runtime, run, run_many

threejs = pytest.importorskip("gen3deval.execute.threejs")

BOX_JS = "function createObject(THREE) { return new THREE.Mesh(new THREE.BoxGeometry(1, 1, 1)); }\n"
BOX_PY = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1, 1)\n"


@pytest.fixture(scope="module")
def js_runtime() -> None:
    try:
        check_runtime("threejs")
    except DependencyError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def bare_scaffold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the scaffold as an installed wheel has it: package files, no node_modules."""
    dst = tmp_path / "scaffold"
    dst.mkdir()
    for name in ("package.json", "package-lock.json", "runner.js"):
        shutil.copy(threejs.SCAFFOLD_DIR / name, dst / name)
    monkeypatch.setenv("GEN3DEVAL_THREEJS_SCAFFOLD", str(dst))
    return dst


def test_threejs_without_node_modules(js_runtime: None, bare_scaffold: Path) -> None:
    with pytest.raises(DependencyError) as exc:
        check_runtime("threejs")
    msg = str(exc.value)
    assert "three.js is not installed" in msg and f"npm ci --prefix {bare_scaffold}" in msg
    # Running a program is then the same environment error, not a `runtime` failure of the program.
    with pytest.raises(DependencyError, match="npm ci"):
        run(BOX_JS, "threejs")
    with pytest.raises(DependencyError, match="npm ci"):
        run_many([BOX_JS, BOX_JS], "threejs", jobs=2)


def test_the_negative_answer_is_not_cached(
    js_runtime: None, bare_scaffold: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DependencyError):
        check_runtime("threejs")
    # Installing the package (here: linking the real one) fixes it without a restart.
    (bare_scaffold / "node_modules").symlink_to(threejs.SCAFFOLD_DIR / "node_modules")
    check_runtime("threejs")
    r = run(BOX_JS, "threejs")
    assert r.executable and r.mesh is not None and r.mesh.n_faces == 12


def test_threejs_without_node(js_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("GEN3DEVAL_NODE", raising=False)
    with pytest.raises(DependencyError, match=r"`node` is not on PATH: install Node.js >= 20.11"):
        check_runtime("threejs")
    with pytest.raises(DependencyError, match=r"install Node\.js"):
        run(BOX_JS, "threejs")


def test_threejs_with_an_old_node(js_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "node"
    old.write_text("#!/bin/sh\necho v18.19.0\n")
    old.chmod(0o755)
    monkeypatch.setenv("GEN3DEVAL_NODE", str(old))
    with pytest.raises(DependencyError, match=r"Node.js >= 20.11 is required .*found 'v18.19.0'"):
        check_runtime("threejs")
    monkeypatch.setenv("GEN3DEVAL_NODE", str(tmp_path / "missing-node"))
    with pytest.raises(DependencyError, match="is not an executable file"):
        check_runtime("threejs")


def test_a_positive_check_is_cached(js_runtime: None) -> None:
    ex = EXECUTORS["threejs"]
    check_runtime("threejs")
    assert ex.runtime_key() in ex._ok
    t0 = time.perf_counter()
    for _ in range(100):
        check_runtime("threejs")
    assert time.perf_counter() - t0 < 0.5  # no node process per call (one `node --version` is ~50 ms)


def test_exec_cli_reports_a_missing_runtime(
    js_runtime: None, bare_scaffold: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = tmp_path / "box.js"
    prog.write_text(BOX_JS)
    assert main(["exec", str(prog), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no result: the program was not run
    assert "three.js is not installed" in captured.err and "npm ci --prefix" in captured.err
    assert "Traceback" not in captured.err


def _shadow_cadquery(where: Path, error: str) -> Path:
    """A ``cadquery`` package that fails to import like a broken installation does."""
    pkg = where / "cadquery"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(f"raise {error}\n")
    return where


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        ("ModuleNotFoundError(\"No module named 'OCP'\")", "pip install 'gen3deval[cad]'"),
        (
            'ImportError("libGL.so.1: cannot open shared object file: No such file or directory")',
            "libGL.so.1",
        ),
    ],
)
def test_cadquery_not_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str, needle: str
) -> None:
    shadow = _shadow_cadquery(tmp_path / "shadow", error)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    )
    with pytest.raises(DependencyError) as exc:
        check_runtime("cadquery")
    msg = str(exc.value)
    assert needle in msg and "cadquery cannot be imported" in msg
    if "libGL" in needle:
        assert "apt-get install" in msg


def test_cadquery_worker_import_failure_is_a_dependency_error(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` of a CadQuery program whose workers cannot import cadquery (a missing system library)
    raises DependencyError, as ``No module named cadquery`` did: before, it was an ExecutionError."""
    from gen3deval.execute import cadquery_worker

    # Inside the virtualenv: as root the worker mounts a private /tmp before it imports cadquery, and keeps
    # only the virtualenv and gen3deval visible there (a checkout, as CI's, may itself live under /tmp).
    where = Path(sys.prefix) / f".gen3deval-test-shadow-{os.getpid()}"
    request.addfinalizer(lambda: shutil.rmtree(where, ignore_errors=True))
    shadow = _shadow_cadquery(where, 'ImportError("libGL.so.1: cannot open shared object file")')
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    )
    cadquery_worker.shutdown()  # workers started before would still have the real cadquery
    try:
        with pytest.raises(DependencyError, match=r"cadquery cannot be imported .*libGL\.so\.1"):
            run(BOX_PY, "cadquery")
    finally:
        cadquery_worker.shutdown()


def test_cadquery_check_passes_here() -> None:
    try:
        import importlib.util

        if importlib.util.find_spec("cadquery") is None:
            pytest.skip("cadquery is not installed")
    except ValueError:
        pytest.skip("cadquery is not importable")
    check_runtime("cadquery")
    ex = EXECUTORS["cadquery"]
    assert (sys.executable, os.environ.get("PYTHONPATH", "")) in ex._ok
