"""Building a run from a spec: load the suites into case entries, fingerprint the protocol, make the
:class:`~gen3deval.engine.runner.Engine`. Everything here is validation before any work."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gen3deval.config import Protocol, RunSpec
from gen3deval.engine.progress import NullProgress
from gen3deval.engine.runner import CaseEntry, Engine
from gen3deval.errors import ConfigError, UserInputError


def renderer_info(protocol: Protocol) -> dict[str, Any]:
    """The renderer's description (backend, GL renderer string) when the protocol renders, else {}."""
    if not protocol.renders:
        return {}
    try:
        from gen3deval.engine.stages import get_renderer

        info = getattr(get_renderer(protocol.render_size), "info", None)
        return dict(info) if info else {"renderer": "unknown"}
    except Exception as exc:  # no GL here: the reference stage will record the render failure per case
        return {"renderer": "unavailable", "error": f"{type(exc).__name__}: {exc}"[:300]}


def protocol_fingerprint(protocol: Protocol, renderer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fingerprint dict of a protocol (PROTOCOLS.md section 11) via :func:`gen3deval.protocol.fingerprint`:
    parameters, library versions, renderer, model ids and sandbox limits."""
    from gen3deval.protocol import fingerprint

    models = {"clip": protocol.clip_model} if protocol.clip_model and "clip_score" in protocol.metrics else {}
    return fingerprint(
        protocol.params(),
        name=protocol.name,
        version=protocol.version,
        renderer=renderer if renderer is not None else renderer_info(protocol),
        models=models,
        sandbox=protocol.limits.to_dict(),
    )


def load_cases(
    suite_specs: Iterable[str], limit: int | None = None
) -> tuple[list[CaseEntry], list[dict[str, Any]]]:
    """Load every suite; returns the case entries (keys unique) and suite descriptions for meta."""
    from gen3deval.suites import load_suite

    specs = list(suite_specs)
    entries: list[CaseEntry] = []
    suites: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in specs:
        suite = load_suite(spec, limit=limit)
        suites.append(
            {
                "name": suite.name,
                "kind": suite.kind,
                "source": suite.source,
                "description": suite.description,
                "n_cases": len(suite.cases),
                "problems": list(suite.problems),
            }
        )
        for c in suite.cases:
            key = c.id if len(specs) == 1 else f"{suite.name}/{c.id}"
            if key in seen:
                raise UserInputError(f"suite {suite.name}: case id {c.id!r} appears twice")
            seen.add(key)
            entries.append(CaseEntry(key=key, case=c, suite=suite.name))
    return entries, suites


def build_engine(
    spec: RunSpec, *, progress: NullProgress | None = None
) -> tuple[Engine, list[dict[str, Any]]]:
    """Load the suites of ``spec`` and make its engine (all validation happens here, before any work)."""
    if spec.protocol.unavailable():
        raise ConfigError(f"protocol {spec.protocol.name!r}: " + "; ".join(spec.protocol.unavailable()))
    from gen3deval.engine.store import is_run_dir

    out = Path(spec.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_run_dir(out))):
        raise ConfigError(f"out: {out} exists and is not a gen3deval run folder; choose another --out")
    entries, suites = load_cases(spec.suites, spec.limit)
    engine = Engine(
        spec.out,
        entries,
        spec.systems,
        spec.protocol,
        fingerprint=protocol_fingerprint(spec.protocol),
        jobs=spec.jobs,
        retries=spec.retries,
        progress=progress,
    )
    return engine, suites


def spec_json(spec: RunSpec) -> dict[str, Any]:
    return json.loads(json.dumps(spec.to_dict(), default=str))
