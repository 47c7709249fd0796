"""The run's metadata in the store (``meta`` table): written by the engine at the start of each run invocation,
in the engine's transaction, so the metadata is all there or not at all whenever the run is killed."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen3deval.config import stable_hash
from gen3deval.errors import ConfigError

if TYPE_CHECKING:
    from gen3deval.engine.runner import CaseEntry
    from gen3deval.engine.store import Store


def write_run_meta(
    store: Store,
    *,
    run_dir: Path,
    params: dict[str, Any],
    fingerprint: dict[str, Any],
    systems: list[str],
    cases: Iterable[CaseEntry],
    attempts: dict[tuple[str, str], int],
    suites: list[dict[str, Any]],
    spec: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Check the stored protocol against this run's and record run id, protocol, systems (labels), cases,
    suites, spec and attempts (where not 1). Returns the fingerprint the rows keep: the one the run folder
    was created with. Raises ConfigError when the folder was made with other protocol parameters."""
    params_hash = stable_hash(params)
    old_params = store.get_meta("protocol_params_hash")
    if old_params is not None and old_params != params_hash:
        old = store.get_meta("protocol", {}) or {}
        raise ConfigError(
            f"protocol: {run_dir} was made with protocol {old.get('name', '?')!r} with other parameters "
            f"(hash {old_params}, now {params_hash}); use another --out, or `gen3deval clean` it first"
        )
    if store.get_meta("run_id") is None:
        store.set_meta("run_id", f"{run_dir.name}-{uuid.uuid4().hex[:8]}")
        store.set_meta("created", datetime.now(UTC).isoformat(timespec="seconds"))
        store.set_meta("protocol", fingerprint)
        store.set_meta("protocol_params_hash", params_hash)
        store.set_meta("protocol_obj", params)
    else:
        old = store.get_meta("protocol") or {}
        if str(old.get("hash") or stable_hash(old)) != str(
            fingerprint.get("hash") or stable_hash(fingerprint)
        ):
            log(
                "note: software versions differ from the ones this run folder was started with; "
                "the stored protocol fingerprint is kept and new rows record their own fingerprint hash"
            )
        # Rows and reports keep the fingerprint the run was created with.
        fingerprint = old
    known = store.get_meta("systems", []) or []
    known += [label for label in systems if label not in known]
    store.set_meta("systems", known)
    cases = list(cases)
    stored_cases = store.get_meta("cases", {}) or {}
    for c in cases:
        stored_cases[c.key] = {"id": c.case.id, "category": c.case.category, "suite": c.suite}
    store.set_meta("cases", stored_cases)
    prev = store.get_meta("suites", []) or []
    names = {s["name"] for s in prev}
    store.set_meta("suites", prev + [s for s in suites if s["name"] not in names])
    store.set_meta("spec", spec)
    # Attempts per (system, case) where not 1 (results and progress read them; the latest plan wins).
    stored_attempts = store.get_meta("attempts", {}) or {}
    for label in systems:
        per = stored_attempts.setdefault(label, {})
        for c in cases:
            n = attempts[(c.key, label)]
            if n == 1:
                per.pop(c.key, None)
            else:
                per[c.key] = n
        if not per:
            del stored_attempts[label]
    store.set_meta("attempts", stored_attempts)
    return fingerprint
