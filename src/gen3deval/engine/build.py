"""Building a run from a spec: load the suites into case entries, fingerprint the protocol, make the
:class:`~gen3deval.engine.runner.Engine` and check it (:func:`preflight`). Everything here is validation
before any work: a configuration that cannot work is refused here, never scored as a system's failures."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gen3deval.config import Protocol, RunSpec, SuiteEntry, suite_entry_parts
from gen3deval.engine.progress import NullProgress
from gen3deval.engine.runner import CaseEntry, Engine
from gen3deval.errors import ConfigError, DependencyError, UserInputError


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


def protocol_fingerprint(
    protocol: Protocol,
    renderer: dict[str, Any] | None = None,
    systems: dict[str, Any] | None = None,
    models: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fingerprint dict of a protocol (PROTOCOLS.md section 11) via :func:`gen3deval.protocol.fingerprint`:
    parameters, library versions, renderer, model ids, sandbox limits and isolation layers (a program that is
    stopped under ``GEN3DEVAL_SANDBOX=full`` may read files under ``basic``: such runs are not comparable).
    ``systems`` ({label: system object}): those that name models (``fingerprint_models()``: a model id and its
    prompt template's version) add them under ``models``. ``models``: the learned models' entries
    (:func:`gen3deval.engine.learned.fingerprint_models`: id and weights hash, or unavailable); resolved here
    when not given."""
    from dataclasses import asdict

    from gen3deval.execute.sandbox.policy import default_isolation
    from gen3deval.protocol import fingerprint

    if models is None:
        from gen3deval.engine.learned import fingerprint_models, resolve_models

        models = fingerprint_models(protocol, *resolve_models(protocol))
    models = dict(models)
    for label, obj in (systems or {}).items():
        named = getattr(obj, "fingerprint_models", None)
        if named is not None:
            models[label] = named()
    return fingerprint(
        protocol.params(),
        name=protocol.name,
        version=protocol.version,
        renderer=renderer if renderer is not None else renderer_info(protocol),
        models=models,
        sandbox={**protocol.limits.to_dict(), "isolation": asdict(default_isolation())},
    )


def load_cases(
    suite_specs: Iterable[SuiteEntry], limit: int | None = None, seed: int = 0
) -> tuple[list[CaseEntry], list[dict[str, Any]]]:
    """Load every suite; returns the case entries (keys unique) and suite descriptions for meta.

    A suite entry is a spec string or a mapping with suite options (``categories``, ``up``, ``limit``, ...);
    ``limit``/``seed`` apply to every suite without its own (a stratified sample, see ``load_suite``).
    """
    from gen3deval.suites import load_suite

    specs = list(suite_specs)
    entries: list[CaseEntry] = []
    suites: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in specs:
        spec, options = suite_entry_parts(entry)
        suite = load_suite(spec, **{"limit": limit, "seed": seed, **options})
        suites.append(
            {
                "name": suite.name,
                "kind": suite.kind,
                "source": suite.source,
                "description": suite.description,
                "n_cases": len(suite.cases),
                "problems": list(suite.problems),
                "options": {k: v for k, v in suite.options.items() if v is not None},
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
    spec: RunSpec, *, progress: NullProgress | None = None, retry_failed: bool = False
) -> tuple[Engine, list[dict[str, Any]]]:
    """Load the suites of ``spec``, make its engine and :func:`preflight` it (all validation happens here,
    before any work). The preflight's warnings are in ``engine.warnings``, for the caller to print."""
    if spec.protocol.unavailable():
        raise ConfigError(f"protocol {spec.protocol.name!r}: " + "; ".join(spec.protocol.unavailable()))
    from gen3deval.engine.store import is_run_dir

    out = Path(spec.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_run_dir(out))):
        raise ConfigError(f"out: {out} exists and is not a gen3deval run folder; choose another --out")
    entries, suites = load_cases(spec.suites, spec.limit, spec.seed)
    from gen3deval.systems.base import SYSTEMS, create_system

    objects = {
        s.label: create_system(s.name, s.settings, base_dir=s.base_dir)
        for s in spec.systems
        if s.name in SYSTEMS
    }
    from gen3deval.engine.learned import fingerprint_models, resolve_models

    models, skipped = resolve_models(spec.protocol)
    engine = Engine(
        spec.out,
        entries,
        spec.systems,
        spec.protocol,
        fingerprint=protocol_fingerprint(
            spec.protocol, systems=objects, models=fingerprint_models(spec.protocol, models, skipped)
        ),
        models=models,
        skipped_metrics=skipped,
        system_objects=objects,
        jobs=spec.jobs,
        retries=spec.retries,
        progress=progress,
        retry_failed=retry_failed,
        shard=spec.shard,
        executor=spec.executor,
        ray_address=spec.ray_address,
        ray_shared_dir=spec.ray_shared_dir,
    )
    engine.warnings = preflight(engine)
    # One line per skipped model (its metrics share the reason).
    for why in dict.fromkeys(skipped.values()):
        keys = ", ".join(k for k, w in skipped.items() if w == why)
        engine.warnings.append(f"skipped {keys}: {why}")
    return engine, suites


def _no_reference(case: Any) -> bool:
    return not (case.ref_mesh or case.ref_code)


def runtime_languages(engine: Engine) -> dict[str, str]:
    """{program language: who needs it} of every language the run will execute: reference programs,
    systems that write programs (their ``language``, else the protocol's). Systems whose outputs are only
    known later (``files``) check their languages in their own ``preflight``."""
    need: dict[str, str] = {}
    for e in engine.cases:
        if e.case.ref_code and not e.case.ref_mesh:
            need.setdefault(
                e.case.ref_code_lang or "cadquery", f"the reference programs of suite {e.suite!r}"
            )
    for s in engine.systems:
        obj = engine.objects.get(s.label)
        if getattr(obj, "output", None) == "program":
            lang = getattr(obj, "language", None) or engine.protocol.language
            if lang:
                need.setdefault(lang, f"system {s.label!r}")
    return need


def preflight(engine: Engine) -> list[str]:
    """Check a run before any work; returns warnings to print.

    Raises ConfigError when a system that needs references (the offline baselines) meets a suite whose
    cases have none (``images:DIR``), or when a system's own ``preflight`` refuses; DependencyError when
    the runtime of a language the run executes is missing (an environment error, never a program's
    failure). Some cases without a reference only warn: those cases fail as before.
    """
    warnings: list[str] = []
    by_suite: dict[str, list[CaseEntry]] = {}
    for e in engine.cases:
        by_suite.setdefault(e.suite, []).append(e)
    for s in engine.systems:
        if not engine.needs_reference(s.label):
            continue
        for suite, entries in by_suite.items():
            missing = [e for e in entries if _no_reference(e.case)]
            if missing and len(missing) == len(entries):
                raise ConfigError(
                    f"system {s.label!r} needs a reference mesh, but suite {suite!r} has none (its "
                    f"{len(entries)} cases have no reference mesh or program); evaluate it on a suite with "
                    "references, or choose systems that need none (e.g. --system files:dir=OUTPUTS)"
                )
            if missing:
                warnings.append(
                    f"system {s.label!r} needs a reference mesh: {len(missing)} of {len(entries)} cases of "
                    f"suite {suite!r} have none (e.g. {missing[0].case.id!r}); they will fail"
                )
    from gen3deval import execute

    check = getattr(execute, "check_runtime", None)  # gen3deval.execute.check_runtime (contract 5)
    if check is not None:
        for lang, who in runtime_languages(engine).items():
            try:
                check(lang)
            except DependencyError as exc:
                raise DependencyError(f"{exc} (needed by {who}; nothing was run)") from None
    cases = [e.case for e in engine.cases]
    for s in engine.systems:
        obj = engine.objects.get(s.label)
        if obj is not None:
            warnings += [f"system {s.label!r}: {w}" for w in obj.preflight(cases)]
    engine.attempts()  # asks every system now: a wrong answer is refused before any work
    return warnings


def spec_json(spec: RunSpec) -> dict[str, Any]:
    return json.loads(json.dumps(spec.to_dict(), default=str))
