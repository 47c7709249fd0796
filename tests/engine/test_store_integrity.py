"""A damaged, full or read-only store gives one clear line (never a traceback, never "complete")."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_standins import run_two_systems

from gen3deval.cli import main
from gen3deval.config import get_protocol
from gen3deval.engine.store import STORE_NAME, Store, StoreError

PROTOCOL = get_protocol({"name": "default", "metrics": ["chamfer_l1"], "image_metrics": []})
HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def _run(run_dir: Path, n: int = 40) -> None:
    run_two_systems(run_dir, n, PROTOCOL, width=3)


def _smash_page(path: Path, page: int) -> None:
    """Write garbage over one whole page of an SQLite file (what a bad sector or a torn copy does)."""
    size = 4096
    assert path.stat().st_size > (page + 1) * size
    with path.open("r+b") as f:
        f.seek(page * size)
        f.write(bytes(range(256)) * (size // 256))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    _run(run_dir)
    return run_dir


def test_a_corrupted_page_is_reported_as_damage_not_as_complete(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    store = run_dir / STORE_NAME
    n_pages = store.stat().st_size // 4096
    assert n_pages >= 8  # a real multi-page store
    _smash_page(store, n_pages // 2)
    for cmd in ("progress", "report"):
        assert main([cmd, str(run_dir)]) == 2, cmd
        err = capsys.readouterr().err
        assert "damaged" in err and str(store) in err and "gen3deval clean" in err, err
        assert "complete" not in err
    with pytest.raises(StoreError, match="damaged"):
        Store(run_dir)  # the engine's open (a resume) refuses it too
    # `clean` still deletes it.
    assert main(["clean", str(run_dir), "--yes"]) == 0 and not run_dir.exists()


def test_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / STORE_NAME).write_bytes(b"definitely not sqlite\n" * 300)
    assert main(["progress", str(tmp_path)]) == 2
    assert "damaged (file is not a database)" in capsys.readouterr().err
    # An SQLite database of something else is not taken for a run either.
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / STORE_NAME).execute("CREATE TABLE t (x)").connection.close()
    assert main(["report", str(other)]) == 2
    assert "not a gen3deval run store" in capsys.readouterr().err


def _put(store: Store, i: int, payload: str = "") -> None:
    store.put(
        case=f"c{i}",
        system="s",
        attempt=1,
        stage="generate",
        status="done",
        input_hash="h",
        protocol_hash="p",
        started=1.0,
        finished=2.0,
        value={"payload": payload},
    )


def test_a_full_store_is_a_clear_error_and_keeps_what_was_committed(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.begin_session("s")
        for i in range(5):
            _put(store, i)
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        # As if the disk were full: SQLite may not grow the file past its current size.
        store.db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match="disk is full") as info:
            _put(store, 99, payload="x" * 200_000)
        assert "gen3deval run --out" in str(info.value)
        assert not store.db.in_transaction  # nothing half-written is left open
        assert store.get("c99", "s", 1, "generate") is None
        with pytest.raises(StoreError, match="disk is full"), store.transaction():
            store.set_meta("big", "y" * 200_000)
    with Store(tmp_path, readonly=True) as store:
        assert sorted(r.case for r in store.rows()) == [f"c{i}" for i in range(5)]
        assert store.get_meta("big") is None


_FSIZE_DRIVER = """
import resource, signal, sys
sys.path.insert(0, sys.argv[3])
from engine_driver import engine
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    engine(sys.argv[1], 60, 0, 0.0).run()
except Exception as exc:
    print("STOPPED", type(exc).__name__, exc)
"""


def test_a_run_that_cannot_write_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    """A real write failure mid-run (file size limit: writes fail like on a full disk)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _FSIZE_DRIVER, str(run_dir), "400000", str(HERE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    stopped = [ln for ln in proc.stdout.splitlines() if ln.startswith("STOPPED")]
    assert stopped, proc.stdout + proc.stderr
    # Either the store or an artifact write failed first; both name the file.
    assert stopped[0].startswith(("STOPPED StoreError", "STOPPED OSError")), stopped
    with Store(run_dir, readonly=True) as store:
        kept = len(store.all())
    assert kept > 0
    from engine_driver import engine

    result = engine(str(run_dir), 60, 0, 0.0).run()
    assert sum(result.skipped.values()) == kept  # every committed row is reused
    assert sum(result.ran.values()) + kept == 60 * 8  # reference + 2 x (generate, render, score) + execute


# --- read-only run folders -------------------------------------------------------------------------------


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="g3d-ro-"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(d)


def _reader_prefix() -> list[str]:
    """The command prefix that runs as a user who may not write the run folder.

    Root ignores file permissions, so as root that is ``nobody`` (setpriv); skipped if impossible here.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: cannot test as a user without write permission")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import gen3deval"], env={**os.environ, "PYTHONPATH": str(SRC)}
    )
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run this Python / import gen3deval")
    return prefix


def _as_reader(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGV`` as a user who may not write the run folder."""
    return subprocess.run(
        [*_reader_prefix(), sys.executable, *argv],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _make_readonly(run_dir: Path) -> None:
    for p in [run_dir, *run_dir.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def test_progress_and_report_on_a_read_only_run_folder(finished_run: Path, shared_tmp: Path) -> None:
    run_dir = shared_tmp / "run"
    shutil.copytree(finished_run, run_dir)
    _make_readonly(run_dir)
    p = _as_reader(["-m", "gen3deval", "progress", "run"], shared_tmp)
    assert p.returncode == 0, p.stderr
    assert "0 stages left: complete" in p.stdout
    r = _as_reader(["-m", "gen3deval", "report", "run"], shared_tmp)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot write the report files there" in r.stderr and "--out DIR" in r.stderr
    out = shared_tmp / "reports"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    r = _as_reader(["-m", "gen3deval", "report", "run", "--out", "reports"], shared_tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(Path("reports") / "report.html")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 40 * 2
    # The artifacts stay in the run folder: the copied report points at them by absolute path.
    paths = [Path(v) for r in rows for v in r["artifacts"].values() if isinstance(v, str)]
    assert paths and all(p.is_absolute() and p.is_file() and run_dir.resolve() in p.parents for p in paths)


def test_a_read_only_folder_with_a_write_ahead_log(tmp_path: Path, shared_tmp: Path) -> None:
    """What a killed run leaves (store + -wal + -shm), then made read-only: the log's rows are read."""
    live = tmp_path / "live"
    store = Store(live)
    store.begin_session("s")
    for i in range(3):
        _put(store, i)
    copy = shared_tmp / "run"
    copy.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(live / (STORE_NAME + suffix), copy / (STORE_NAME + suffix))
    store.close()
    assert (copy / (STORE_NAME + "-wal")).stat().st_size > 0
    script = (
        "from gen3deval.engine.store import Store\n"
        "with Store('run', readonly=True) as s: print(sorted(r.case for r in s.rows()))"
    )
    _make_readonly(copy)
    r = _as_reader(["-c", script], shared_tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['c0', 'c1', 'c2']"
    # Without the -shm index the log cannot be read in a read-only folder: said, not silently skipped.
    (copy / (STORE_NAME + "-shm")).chmod(0o644)
    copy.chmod(0o755)
    (copy / (STORE_NAME + "-shm")).unlink()
    copy.chmod(0o555)
    r = _as_reader(["-c", script], shared_tmp)
    assert r.returncode == 1 and "unmerged rows" in r.stderr, r.stderr
