"""The run store: one SQLite file per run folder (``RUN_DIR/store.sqlite``), WAL mode, written only by the engine.

Tables:

- ``stages``: one row per (case, system, attempt, stage) -- the only proof that a stage finished.
  ``status`` is ``done`` or ``failed``; ``input_hash`` identifies the inputs the stage ran on (a row whose
  inputs changed is stale and is recomputed); ``value`` is the stage's JSON output, ``artifacts`` the
  JSON map of its files (paths relative to the run folder); ``started``/``finished`` are Unix times,
  ``session`` the run invocation that wrote it and ``runs`` how many times the key has been executed
  (1 unless it was stale or retried). The per-case ``reference`` stage has ``system = ''``.
- ``sessions``: one row per ``gen3deval run`` invocation on this folder (start time, pid, spec hash).
- ``meta``: key -> JSON (run id, creation time, spec, protocol fingerprint).
- ``jobs``: one row per try of a remote job (:mod:`gen3deval.engine.jobs_table`).

Durability: WAL with ``synchronous=NORMAL`` survives a killed process (only a power loss can drop the
last transactions, which then simply get recomputed). A row is committed after its artifacts are on disk.

Trust: every open runs ``PRAGMA quick_check`` (read-only opens) or ``PRAGMA integrity_check`` (the engine's
read-write open); both cost ~6 ms on a 304-case store and ~50 ms on an 80 MB one. A damaged, full,
read-only or locked store raises :class:`StoreError` (a UserInputError: one line naming the file and the
fix), never a raw ``sqlite3`` error. A read-only run folder (no write permission, read-only mount) is
opened with SQLite's ``mode=ro`` (or ``immutable=1`` when there is no write-ahead log to read).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gen3deval.engine.jobs_table import SCHEMA as JOBS_SCHEMA
from gen3deval.engine.pipeline import STAGES as PIPELINE_STAGE_NAMES
from gen3deval.errors import UserInputError

STORE_NAME = "store.sqlite"
SCHEMA_VERSION = 1
STAGES = PIPELINE_STAGE_NAMES  # defined once, in gen3deval.engine.pipeline
REFERENCE_SYSTEM = ""  # the system column of per-case reference rows

_F = TypeVar("_F", bound=Callable[..., Any])


class StoreError(UserInputError):
    """The run store cannot be used (damaged, full, read-only, locked); the message names the file and the fix."""


def store_error(path: Path, exc: BaseException, name: str | None = None) -> StoreError:
    """A :class:`StoreError` explaining a sqlite3 (or row decoding) error on the store at ``path``.

    ``name`` overrides the SQLite error name of ``exc`` (e.g. ``SQLITE_CORRUPT`` for a failed check).
    """
    run_dir = path.parent
    name = name or getattr(exc, "sqlite_errorname", "") or ""
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or isinstance(exc, json.JSONDecodeError):
        return StoreError(
            f"{path}: the run store is damaged ({detail}); its results cannot be trusted. Delete the run "
            f"(`gen3deval clean {run_dir}`) and run again, or restore {STORE_NAME} from a backup "
            f"(finished rows can often be salvaged with `sqlite3 {path} .recover`)"
        )
    if name.startswith("SQLITE_FULL"):
        return StoreError(
            f"{path}: the disk is full ({detail}); every row committed before is kept: free some space and "
            f"resume with `gen3deval run --out {run_dir}`"
        )
    if name.startswith("SQLITE_READONLY") or name.startswith("SQLITE_PERM"):
        return StoreError(
            f"{path}: the run store cannot be written ({detail}): the run folder or file is read-only; "
            "make it writable, or copy the run folder somewhere writable"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(f"{path}: the run store is locked by another process ({detail}); try again later")
    if name.startswith("SQLITE_CANTOPEN"):
        return StoreError(
            f"{path}: cannot open the run store ({detail}): check that the file and its folder exist and "
            "that you may read them"
        )
    if name.startswith("SQLITE_IOERR"):
        return StoreError(f"{path}: input/output error on the run store ({detail}): a full or failing disk?")
    return StoreError(f"{path}: run store error: {detail}")


def _sqlite_errors(fn: _F) -> _F:
    """Turn sqlite3 errors (and undecodable rows) of a Store method into StoreError naming the file."""

    @functools.wraps(fn)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (sqlite3.OperationalError, json.JSONDecodeError) as exc:
            raise store_error(self.path, exc) from exc
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                raise  # a bug of ours, not the file's
            raise store_error(self.path, exc) from exc

    return wrapper  # type: ignore[return-value]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    "case" TEXT NOT NULL,
    system TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    input_hash TEXT NOT NULL,
    protocol_hash TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    seconds REAL NOT NULL,
    error_class TEXT,
    error TEXT,
    artifacts TEXT NOT NULL DEFAULT '{}',
    value TEXT NOT NULL DEFAULT '{}',
    session INTEGER NOT NULL,
    runs INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY ("case", system, attempt, stage)
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    pid INTEGER NOT NULL,
    spec_hash TEXT NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StageRow:
    """One stored stage result (see the module docstring for the fields)."""

    case: str
    system: str
    attempt: int
    stage: str
    status: str
    input_hash: str
    protocol_hash: str
    started: float
    finished: float
    seconds: float
    error_class: str | None
    error: str | None
    artifacts: dict[str, Any]
    value: dict[str, Any]
    session: int
    runs: int = 1

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.case, self.system, self.attempt, self.stage)

    @property
    def ok(self) -> bool:
        return self.status == "done"


_COLUMNS = (
    '"case", system, attempt, stage, status, input_hash, protocol_hash, started, finished, seconds, '
    "error_class, error, artifacts, value, session, runs"
)


def _row(r: sqlite3.Row | tuple[Any, ...]) -> StageRow:
    return StageRow(
        case=r[0],
        system=r[1],
        attempt=int(r[2]),
        stage=r[3],
        status=r[4],
        input_hash=r[5],
        protocol_hash=r[6],
        started=float(r[7]),
        finished=float(r[8]),
        seconds=float(r[9]),
        error_class=r[10],
        error=r[11],
        artifacts=json.loads(r[12]),
        value=json.loads(r[13]),
        session=int(r[14]),
        runs=int(r[15]),
    )


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds a gen3deval store."""
    return (Path(path) / STORE_NAME).is_file()


def require_run_dir(path: str | Path) -> Path:
    """``path`` as a Path; a UserInputError naming it when it is not a run folder."""
    from gen3deval.errors import UserInputError

    run_dir = Path(path)
    if not is_run_dir(run_dir):
        raise UserInputError(f"{run_dir}: not a run folder (no {STORE_NAME}); make one with `gen3deval run`")
    return run_dir


class Store:
    """The SQLite store of one run folder. Use as a context manager or call :meth:`close`.

    ``readonly=True`` opens an existing store for reading (``progress``/``report`` while a run is going on).
    """

    def __init__(self, run_dir: str | Path, *, readonly: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        self.readonly = readonly
        self.session: int = 0
        try:
            if readonly:
                if not self.path.is_file():
                    raise FileNotFoundError(self.path)
                self.db = self._connect_readonly()
                self._check("quick_check")
                if not self.db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stages'"
                ).fetchone():
                    self.db.close()
                    raise StoreError(f"{self.path}: not a gen3deval run store (it has no stages table)")
            else:
                try:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"{self.run_dir}: cannot create the run folder: {exc.strerror}") from exc
                self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                self._check("integrity_check")
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                self.db.executescript(JOBS_SCHEMA)
                if self.get_meta("schema_version") is None:
                    self.set_meta("schema_version", SCHEMA_VERSION)
            self.db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self.db.close()
            raise store_error(self.path, exc) from exc

    def _connect_readonly(self) -> sqlite3.Connection:
        """A reading connection; in a folder we may not write, SQLite's ``mode=ro`` or ``immutable=1``.

        Not always mode=ro: a WAL reader may need to create the -shm file after an unclean shutdown.
        """
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            name = getattr(exc, "sqlite_errorname", "") or ""
            if not name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")):
                raise
        uri = self.path.resolve().as_uri()
        db = sqlite3.connect(f"{uri}?mode=ro", timeout=30.0, isolation_level=None, uri=True)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.is_file() and wal.stat().st_size > 0:
                # immutable=1 would silently skip the rows still in the write-ahead log.
                raise StoreError(
                    f"{self.path}: the run store has unmerged rows in {wal.name} and the run folder is "
                    "read-only; copy the run folder somewhere writable and use the copy"
                ) from exc
        return sqlite3.connect(f"{uri}?immutable=1", isolation_level=None, uri=True)

    def _check(self, pragma: str) -> None:
        """Raise StoreError when ``PRAGMA quick_check``/``integrity_check`` finds damage (cost: see module doc)."""
        result = [r[0] for r in self.db.execute(f"PRAGMA {pragma}").fetchall()]
        if result != ["ok"]:
            self.db.close()
            first = next((ln for ln in "\n".join(map(str, result)).splitlines() if "***" not in ln), "?")
            raise store_error(self.path, sqlite3.DatabaseError(f"{pragma}: {first}"), "SQLITE_CORRUPT")

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_sqlite_errors
    def begin_session(self, spec_hash: str) -> int:
        """Record a new run invocation; its id is written into every row this store commits."""
        cur = self.db.execute(
            "INSERT INTO sessions (started, pid, spec_hash) VALUES (?, ?, ?)",
            (time.time(), os.getpid(), spec_hash),
        )
        self.session = int(cur.lastrowid or 0)
        return self.session

    @_sqlite_errors
    def end_session(self) -> None:
        self.db.execute("UPDATE sessions SET finished = ? WHERE id = ?", (time.time(), self.session))

    @_sqlite_errors
    def sessions(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, started, pid, spec_hash, finished FROM sessions ORDER BY id")
        return [dict(zip(("id", "started", "pid", "spec_hash", "finished"), r, strict=True)) for r in cur]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes (e.g. the run metadata) into one atomic transaction."""
        self._begin()
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._commit()

    @_sqlite_errors
    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    @_sqlite_errors
    def _commit(self) -> None:
        try:
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError:
            self._rollback()  # e.g. SQLITE_FULL at commit: leave no transaction open
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    # -- meta ------------------------------------------------------------------------------------
    @_sqlite_errors
    def get_meta(self, key: str, default: Any = None) -> Any:
        r = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(r[0]) if r else default

    @_sqlite_errors
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, sort_keys=True, default=str)),
        )

    # -- stage rows ------------------------------------------------------------------------------
    @_sqlite_errors
    def put(
        self,
        *,
        case: str,
        system: str,
        attempt: int,
        stage: str,
        status: str,
        input_hash: str,
        protocol_hash: str,
        started: float,
        finished: float,
        error_class: str | None = None,
        error: str | None = None,
        artifacts: dict[str, Any] | None = None,
        value: dict[str, Any] | None = None,
    ) -> StageRow:
        """Insert (or replace a stale) stage row in one transaction; ``runs`` counts executions of the key."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if status not in ("done", "failed"):
            raise ValueError(f"unknown status {status!r}")
        art = json.dumps(artifacts or {}, sort_keys=True)
        val = json.dumps(value or {}, sort_keys=True, allow_nan=True, default=str)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.db.execute(
                f"""INSERT INTO stages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
            ON CONFLICT("case", system, attempt, stage) DO UPDATE SET
              status = excluded.status, input_hash = excluded.input_hash,
              protocol_hash = excluded.protocol_hash, started = excluded.started,
              finished = excluded.finished, seconds = excluded.seconds, error_class = excluded.error_class,
              error = excluded.error, artifacts = excluded.artifacts, value = excluded.value,
              session = excluded.session, runs = stages.runs + 1
            RETURNING runs""",
                (
                    case,
                    system,
                    attempt,
                    stage,
                    status,
                    input_hash,
                    protocol_hash,
                    started,
                    finished,
                    finished - started,
                    error_class,
                    error,
                    art,
                    val,
                    self.session,
                ),
            )
            runs = int(cur.fetchall()[0][0])
        except BaseException:
            self._rollback()
            raise
        self._commit()
        return StageRow(
            case=case,
            system=system,
            attempt=attempt,
            stage=stage,
            status=status,
            input_hash=input_hash,
            protocol_hash=protocol_hash,
            started=started,
            finished=finished,
            seconds=finished - started,
            error_class=error_class,
            error=error,
            artifacts=json.loads(art),
            value=json.loads(val),
            session=self.session,
            runs=runs,
        )

    @_sqlite_errors
    def get(self, case: str, system: str, attempt: int, stage: str) -> StageRow | None:
        r = self.db.execute(
            f'SELECT {_COLUMNS} FROM stages WHERE "case" = ? AND system = ? AND attempt = ? AND stage = ?',
            (case, system, attempt, stage),
        ).fetchone()
        return _row(r) if r else None

    def rows(self, stage: str | None = None) -> Iterator[StageRow]:
        """All stage rows (of one stage), in insertion order."""
        try:
            if stage is None:
                cur = self.db.execute(f"SELECT {_COLUMNS} FROM stages ORDER BY rowid")
            else:
                cur = self.db.execute(
                    f"SELECT {_COLUMNS} FROM stages WHERE stage = ? ORDER BY rowid", (stage,)
                )
            for r in cur:
                yield _row(r)
        except (sqlite3.OperationalError, json.JSONDecodeError) as exc:
            raise store_error(self.path, exc) from exc
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                raise
            raise store_error(self.path, exc) from exc

    @_sqlite_errors
    def all(self) -> dict[tuple[str, str, int, str], StageRow]:
        """{(case, system, attempt, stage): row} of the whole store (a resume plan reads this once)."""
        return {row.key: row for row in self.rows()}

    @_sqlite_errors
    def delete(self, keys: Iterable[tuple[str, str, int, str]]) -> int:
        n = 0
        for case, system, attempt, stage in keys:
            cur = self.db.execute(
                'DELETE FROM stages WHERE "case" = ? AND system = ? AND attempt = ? AND stage = ?',
                (case, system, attempt, stage),
            )
            n += cur.rowcount
        return n

    @_sqlite_errors
    def counts(self) -> dict[tuple[str, str, str], int]:
        """{(stage, system, status): count} for progress summaries."""
        cur = self.db.execute(
            "SELECT stage, system, status, COUNT(*) FROM stages GROUP BY stage, system, status"
        )
        return {(r[0], r[1], r[2]): int(r[3]) for r in cur}
