"""Executors: run a generated program in a sandbox; get a mesh or a classified error (PROTOCOLS.md section 9).

One interface for every language::

    from gen3deval.execute import check_runtime, extract_code, run, run_many

    check_runtime("threejs")                         # DependencyError with the fix if Node/three is missing
    code = extract_code(model_answer, "threejs")    # None when the answer holds no code
    result = run(code, "threejs")                    # ExecResult; never raises for a bad program
    ref = run(truth, "cadquery", role="reference")   # ground truth: never on a candidate's worker
    results = run_many(programs, "cadquery", jobs=2) # input order; None/empty entries -> no_code

The languages are the :data:`EXECUTORS` registry (:mod:`gen3deval.execute.registry`), one module per
language: ``"threejs"`` (:mod:`~gen3deval.execute.threejs_executor`: a fresh sandboxed Node per program,
``function createObject(THREE)``, ``docs/threejs-contract.md``) and ``"cadquery"``
(:mod:`~gen3deval.execute.cadquery_executor`: warm sandboxed workers, ``docs/cadquery-contract.md``).
Their heavy modules are imported only when a program runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from gen3deval.execute.extract import extract_code
from gen3deval.execute.registry import (
    EXECUTORS,
    LANGUAGES,
    check_runtime,
    get_executor,
    language_for_suffix,
    program_suffix,
)
from gen3deval.execute.result import ERROR_CLASSES, ExecResult, Limits


def default_limits(language: str) -> Limits:
    """The limits a program of ``language`` runs under unless told otherwise.

    threejs: 10 s wall/CPU, 2048 MiB address space (Node needs >= 768), no network.
    cadquery: :class:`Limits` defaults (30 s, 2048 MiB: importing CadQuery needs ~1.5 GiB), no network.
    """
    return get_executor(language).default_limits()


def run(
    program: str | None, language: str, limits: Limits | None = None, *, role: str = "candidate"
) -> ExecResult:
    """Run one program of ``language`` (``"cadquery"`` or ``"threejs"``) in its sandbox.

    A None/empty/whitespace program gives error class ``no_code``. ``role``: ``"candidate"`` (a
    system's program, the default) or ``"reference"`` (a suite's ground truth); the two never share a
    warm worker. Raises ConfigError for an unknown language or role, DependencyError when the
    language's runtime is missing (an environment error, never a program's failure), ExecutionError
    when the sandbox itself fails; every failure of the program is an ExecResult.
    """
    return get_executor(language).run(program, limits, role=role)


def run_many(
    programs: Sequence[str | None],
    language: str,
    limits: Limits | None = None,
    jobs: int | None = None,
    *,
    role: str = "candidate",
) -> list[ExecResult]:
    """Run many programs, ``jobs`` at a time (default: the number of cores), results in input order.
    None/empty entries give ``no_code`` results without running anything. ``role`` as in :func:`run`."""
    return get_executor(language).run_many(programs, limits, int(jobs or os.cpu_count() or 1), role=role)


__all__ = [
    "ERROR_CLASSES",
    "EXECUTORS",
    "LANGUAGES",
    "ExecResult",
    "Limits",
    "check_runtime",
    "default_limits",
    "extract_code",
    "get_executor",
    "language_for_suffix",
    "program_suffix",
    "run",
    "run_many",
]
