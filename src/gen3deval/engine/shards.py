"""Sharded runs for batch schedulers (Slurm arrays, Kubernetes indexed jobs) and merging their folders.

``gen3deval run SPEC --shard I/N`` runs shard I of N: the (case, system) pairs with :func:`shard_of` == I,
all attempts of a pair together, plus the ``reference`` stage of every case that has one of its systems in
the shard (so a case's reference may be made in several shards: same key, same bytes). The assignment hashes
``f"{case}\\t{system}"`` with sha256, so it is the same on every machine and Python version, and a pair keeps
its shard when cases or systems are added. Each shard writes its own run folder; the folder records the
whole plan (every case and system) and its shard (meta ``shard`` = [I, N]), and its report and progress
count only the shard's pipelines (:func:`pipeline_filter`).

:func:`merge` unions shard folders (or any run folders of one protocol) into a new folder: stage rows,
remote-job rows, sessions and artifacts are copied, the metadata unioned; the reports are then rebuilt
from the merged store exactly as for an unsharded run, so the numbers are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gen3deval.config import stable_hash
from gen3deval.engine.artifacts import ArtifactStore, sha256_file
from gen3deval.engine.store import StageRow, Store, require_run_dir
from gen3deval.errors import ConfigError, UserInputError

SHARD_META = "shard"  # meta key: [I, N] in a shard's run folder, absent otherwise
MERGED_META = "merged_from"  # meta key of a merged folder: [{run_dir, run_id, shard}]


def shard_of(case_key: str, system_label: str, n: int) -> int:
    """The shard (1..n) that runs the pipelines of (case, system): sha256 of ``case\\tsystem``, mod n."""
    if n < 1:
        raise ValueError(f"shard count must be >= 1, got {n}")
    digest = hashlib.sha256(f"{case_key}\t{system_label}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """``shard`` as (I, N) with 1 <= I <= N, or None; a ConfigError otherwise."""
    if shard is None:
        return None
    i, n = (int(x) for x in shard)
    if not 1 <= i <= n:
        raise ConfigError(f"shard: expected I/N with 1 <= I <= N (e.g. 2/8), got {i}/{n}")
    return i, n


def select(
    cases: Iterable[str], systems: Iterable[str], shard: tuple[int, int] | None
) -> set[tuple[str, str]]:
    """The (case key, system label) pairs whose pipelines shard ``(i, n)`` runs (all pairs for None)."""
    systems = list(systems)
    pairs = {(c, s) for c in cases for s in systems}
    if shard is None:
        return pairs
    i, n = shard
    return {(c, s) for c, s in pairs if shard_of(c, s, n) == i}


def shard_name(shard: tuple[int, int]) -> str:
    """``shard-I-of-N``: the sub-folder a shard's run goes to when ``--out`` is not given."""
    return f"shard-{shard[0]}-of-{shard[1]}"


def record_shard(store: Store, shard: tuple[int, int] | None, run_dir: Path) -> None:
    """Record the shard of a new run folder; refuse to resume a folder with another shard (or none):
    its rows would be another share of the work, and its report would count the wrong pipelines."""
    stored = store.get_meta(SHARD_META)
    if store.get_meta("run_id") is None:  # a new folder
        if shard is not None:
            store.set_meta(SHARD_META, list(shard))
        return
    old = tuple(stored) if stored else None
    if old == (tuple(shard) if shard else None):
        return
    was = f"shard {old[0]}/{old[1]}" if old else "without --shard"
    now = f"--shard {shard[0]}/{shard[1]}" if shard else "without --shard"
    raise ConfigError(
        f"shard: {run_dir} was made {was}; it cannot be resumed {now} (use another --out, or merge "
        "the shard folders with `gen3deval merge OUT RUN_DIR...`)"
    )


def pipeline_filter(store: Store) -> Callable[[str, str], bool]:
    """keep(case, system): whether the run folder is to run that pair's pipelines (its shard, or all)."""
    shard = store.get_meta(SHARD_META)
    if not shard:
        return lambda case, system: True
    i, n = int(shard[0]), int(shard[1])
    return lambda case, system: shard_of(case, system, n) == i


# -- merge ---------------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    """What :func:`merge` did: the merged folder, rows copied, identical duplicates dropped, artifacts."""

    out: Path
    rows: int = 0
    duplicates: int = 0
    artifacts: int = 0
    jobs: int = 0
    sources: list[Path] = field(default_factory=list)


_VOLATILE_SPEC_KEYS = ("out", "shard", "jobs", "executor", "ray_address", "ray_shared_dir")


def _describe(key: tuple[str, str, int, str]) -> str:
    case, system, attempt, stage = key
    return f"{stage} of {case} {system or '(reference)'}" + (f" #{attempt}" if attempt != 1 else "")


# Measurements of how a stage ran, not what it computed: they differ between two runs of one stage.
_MEASUREMENTS = frozenset({"wall_s", "peak_mb", "sandbox"})


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in _MEASUREMENTS}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _result(r: StageRow) -> tuple[Any, ...]:
    """What two rows of one stage must agree on to be the same result (artifacts: by content hash)."""
    return (r.status, r.input_hash, r.error_class, r.error, r.artifacts, _comparable(r.value))


def _artifact_paths(row: StageRow) -> list[str]:
    out: list[str] = []
    for v in row.artifacts.values():
        out += [str(x) for x in v] if isinstance(v, list) else [str(v)] if v else []
    return out


def _read_source(run_dir: Path) -> tuple[dict[str, Any], dict[tuple[str, str, int, str], StageRow]]:
    with Store(run_dir, readonly=True) as store:
        meta = {k: v for k, v in store.db.execute("SELECT key, value FROM meta")}
        rows = store.all()
    return {k: json.loads(v) for k, v in meta.items()}, rows


def _union_list(into: list[Any], more: Iterable[Any]) -> None:
    for x in more:
        if x not in into:
            into.append(x)


def merge(
    out: str | Path, run_dirs: Sequence[str | Path], *, log: Callable[[str], None] = lambda s: None
) -> MergeResult:
    """Union the run folders ``run_dirs`` (e.g. the shards of one spec) into the new folder ``out``.

    Refuses (UserInputError, nothing written): an ``out`` that exists and is not empty; folders whose
    protocol fingerprints (``meta.protocol.hash``) or protocol parameters differ; one system label with two
    system specs; duplicate (case, system, attempt, stage) rows that differ in status, input hash or value
    (identical duplicates, like a case's reference made by several shards, are kept once); an artifact that
    is missing or whose bytes do not match its content-addressed name. Reports are not written here (see
    :func:`gen3deval.engine.results.write_run_reports`).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"merge: {out} exists and is not empty; merge into a new folder")
    if not run_dirs:
        raise UserInputError("merge: name at least one run folder to merge")
    sources = [require_run_dir(d) for d in run_dirs]
    seen_dirs: set[Path] = set()
    for d in sources:
        if d.resolve() in seen_dirs:
            raise UserInputError(f"merge: {d} is named twice")
        seen_dirs.add(d.resolve())

    metas: list[dict[str, Any]] = []
    all_rows: list[dict[tuple[str, str, int, str], StageRow]] = []
    for d in sources:
        meta, rows = _read_source(d)
        if meta.get("protocol_obj") is None:
            raise UserInputError(f"merge: {d} has no protocol recorded (a run killed before it started?)")
        metas.append(meta)
        all_rows.append(rows)

    first, m0 = sources[0], metas[0]
    h0 = str((m0.get("protocol") or {}).get("hash") or stable_hash(m0.get("protocol") or {}))
    for d, m in zip(sources[1:], metas[1:], strict=True):
        h = str((m.get("protocol") or {}).get("hash") or stable_hash(m.get("protocol") or {}))
        if h != h0:
            raise UserInputError(
                f"merge: protocol fingerprints differ: {first} has {h0}, {d} has {h} (other protocol "
                "parameters, software versions, renderer or models: their numbers are not comparable)"
            )
        if m.get("protocol_params_hash") != m0.get("protocol_params_hash"):
            raise UserInputError(
                f"merge: protocol parameters differ: {first} has {m0.get('protocol_params_hash')}, "
                f"{d} has {m.get('protocol_params_hash')}"
            )

    # Rows: the union; a key made in several folders must be the same result.
    merged: dict[tuple[str, str, int, str], tuple[int, StageRow]] = {}
    duplicates = 0
    for idx, rows in enumerate(all_rows):
        for key, row in rows.items():
            have = merged.get(key)
            if have is None:
                merged[key] = (idx, row)
                continue
            other = have[1]
            if _result(row) != _result(other):
                what = "input hashes" if row.input_hash != other.input_hash else "results"
                raise UserInputError(
                    f"merge: {sources[have[0]]} and {sources[idx]} both hold the {_describe(key)} with "
                    f"different {what} ({other.input_hash[:12]} {other.status} vs {row.input_hash[:12]} "
                    f"{row.status}); merge folders of one spec, or rerun one of them"
                )
            duplicates += 1

    meta = _merged_meta(out, sources, metas)
    out.mkdir(parents=True, exist_ok=True)
    result = MergeResult(out=out, duplicates=duplicates, sources=sources)
    try:
        with Store(out) as store, store.transaction():
            for k, v in meta.items():
                store.set_meta(k, v)
            sessions = _copy_sessions(store, sources)
            for key, (idx, row) in merged.items():
                for rel in _artifact_paths(row):
                    result.artifacts += _copy_artifact(sources[idx], out, rel, key)
                _insert_row(store, row, sessions[idx].get(row.session, 0))
                result.rows += 1
            result.jobs = _copy_jobs(store, sources)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # nothing half-merged is left to be mistaken for a run
        raise
    log(
        f"merged {len(sources)} folders into {out}: {result.rows} stage rows ({duplicates} identical "
        f"duplicates kept once), {result.artifacts} artifact files"
    )
    return result


def _merged_meta(out: Path, sources: list[Path], metas: list[dict[str, Any]]) -> dict[str, Any]:
    m0 = metas[0]
    systems: list[str] = []
    suites: list[dict[str, Any]] = []
    cases: dict[str, Any] = {}
    attempts: dict[str, dict[str, int]] = {}
    spec_systems: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for d, m in zip(sources, metas, strict=True):
        _union_list(systems, m.get("systems") or [])
        names = {s.get("name") for s in suites}
        suites += [s for s in m.get("suites") or [] if s.get("name") not in names]
        for k, v in (m.get("cases") or {}).items():
            cases.setdefault(k, v)
        for label, per in (m.get("attempts") or {}).items():
            into = attempts.setdefault(label, {})
            for case, n in per.items():
                if into.setdefault(case, n) != n:
                    raise UserInputError(
                        f"merge: {d} plans {n} attempts of {label} on {case}, another folder {into[case]}"
                    )
        for s in (m.get("spec") or {}).get("systems") or []:
            have = spec_systems.setdefault(s.get("label"), s)
            if have != s:
                raise UserInputError(
                    f"merge: system {s.get('label')!r} is {have} in one folder and {s} in {d}; give them "
                    "different labels"
                )
        skipped.update(m.get("skipped_metrics") or {})
    spec = {k: v for k, v in (m0.get("spec") or {}).items() if k not in _VOLATILE_SPEC_KEYS}
    spec["out"] = str(out)
    spec["systems"] = list(spec_systems.values())
    _union_list(
        spec.setdefault("suites", []), [s for m in metas for s in (m.get("spec") or {}).get("suites", [])]
    )
    return {
        "run_id": f"{out.name}-{uuid.uuid4().hex[:8]}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "protocol": m0.get("protocol"),
        "protocol_params_hash": m0.get("protocol_params_hash"),
        "protocol_obj": m0.get("protocol_obj"),
        "systems": systems,
        "cases": cases,
        "suites": suites,
        "attempts": attempts,
        "spec": spec,
        "skipped_metrics": skipped,
        MERGED_META: [
            {"run_dir": str(d.resolve()), "run_id": m.get("run_id"), "shard": m.get(SHARD_META)}
            for d, m in zip(sources, metas, strict=True)
        ],
    }


def _copy_sessions(store: Store, sources: list[Path]) -> list[dict[int, int]]:
    """Copy each folder's sessions (new ids); returns per folder {old session id: new id}."""
    out: list[dict[int, int]] = []
    for d in sources:
        mapping: dict[int, int] = {}
        with Store(d, readonly=True) as src:
            for s in src.sessions():
                cur = store.db.execute(
                    "INSERT INTO sessions (started, pid, spec_hash, finished) VALUES (?, ?, ?, ?)",
                    (s["started"], s["pid"], s["spec_hash"], s["finished"]),
                )
                mapping[int(s["id"])] = int(cur.lastrowid or 0)
        out.append(mapping)
    return out


def _insert_row(store: Store, r: StageRow, session: int) -> None:
    """The row as it was (times, runs): Store.put would stamp this session and count a run."""
    store.db.execute(
        'INSERT INTO stages ("case", system, attempt, stage, status, input_hash, protocol_hash, started, '
        "finished, seconds, error_class, error, artifacts, value, session, runs) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            r.case,
            r.system,
            r.attempt,
            r.stage,
            r.status,
            r.input_hash,
            r.protocol_hash,
            r.started,
            r.finished,
            r.seconds,
            r.error_class,
            r.error,
            json.dumps(r.artifacts, sort_keys=True),
            json.dumps(r.value, sort_keys=True, allow_nan=True, default=str),
            session,
            r.runs,
        ),
    )


def _copy_artifact(src_dir: Path, out: Path, rel: str, key: tuple[str, str, int, str]) -> int:
    """Copy one content-addressed artifact (checking its bytes against its name); 1 when copied."""
    dst = out / rel
    if dst.exists():
        return 0  # same name, same bytes (checked when it was copied)
    src = src_dir / rel
    if not src.is_file():
        raise UserInputError(f"merge: {src_dir}: artifact {rel} of the {_describe(key)} is missing")
    digest = Path(rel).name.split(".")[0]
    if sha256_file(src) != digest:
        raise UserInputError(
            f"merge: {src_dir}: artifact {rel} of the {_describe(key)} does not match its content hash "
            "(a damaged file)"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, ArtifactStore(out).mode)
    os.replace(tmp, dst)
    return 1


def _copy_jobs(store: Store, sources: list[Path]) -> int:
    """Copy remote-job rows (a pair's jobs live in one shard; a repeated try is kept once)."""
    n = 0
    for d in sources:
        with Store(d, readonly=True) as src:
            has = src.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
            ).fetchone()
            cur = src.db.execute("SELECT * FROM jobs") if has else None
            cols = [c[0] for c in cur.description] if cur is not None else []
            rows = cur.fetchall() if cur is not None else []
        for r in rows:
            names = ", ".join(f'"{c}"' for c in cols)
            marks = ", ".join("?" for _ in cols)
            ins = store.db.execute(f"INSERT OR IGNORE INTO jobs ({names}) VALUES ({marks})", r)
            n += ins.rowcount
    return n
