"""The CadQuery executor: Python programs that import ``cadquery`` and leave a solid in ``solid`` (or
``result``, ``shape``, ...), run by the warm sandboxed template workers of :mod:`gen3deval.execute.cadquery_worker` (client side:
:mod:`gen3deval.execute.cadquery_pool`; one pool per role, reference and candidate; the contract is
``docs/cadquery-contract.md``).

Its runtime is the ``cadquery`` package (with OCP) importable by this interpreter in the workers'
environment: ``pip install 'gen3deval[cad]'`` (``make setup`` in a checkout).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Hashable

from gen3deval.errors import DependencyError
from gen3deval.execute.base import CodeSyntax, Executor
from gen3deval.execute.result import ExecResult, Limits

INSTALL_HINT = "pip install 'gen3deval[cad]' (or pip install cadquery; in a checkout: make setup)"

_IMPORT = re.compile(r"^\s*(?:import\s+cadquery\b|from\s+cadquery\b)", re.M)

SYNTAX = CodeSyntax(
    fence_tags=frozenset({"python", "py", "python3", "py3", "cadquery", "cq"}),
    entry=re.compile(r"^\s*(?:import\s+cadquery\b|from\s+cadquery\b)|\b(?:cq|cadquery)\.\w", re.M),
    signs=re.compile(r"^\s*(?:def |import |from \S+ import |class \w+.*:$)|^\s*\w+\s*=\s*\S|\bcq\.", re.M),
    only=re.compile(
        r"^\s*(?:def \w+\(.*\)\s*(?:->.*)?:\s*$|import \w+(?: as \w+)?\s*$|from \S+ import )", re.M
    ),
    defs=re.compile(r"^(?:def|class)\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*)\s*=", re.M),
    binds=re.compile(r"^\s*(?:def|class)\s+([A-Za-z_]\w*)|^\s*([A-Za-z_]\w*)\s*=(?!=)", re.M),
    code_line=re.compile(
        r"^\s*(?:import\b|from\b|def\b|class\b|return\b|if\b|elif\b|else\b|for\b|while\b|with\b|try\b|except\b|"
        r"finally\b|(?:pass|break|continue)\s*(?:#.*)?$|raise\b|assert\b|del\b|yield\b|global\b|nonlocal\b|"
        r"#|@|[\w.\[\]]+\s*(?:=|\+=|-=|\()|\)|\]|\.\w+\()|[:(,\[\\]\s*$"
    ),
    comments=re.compile(r"#[^\n]*"),
    bare_requires=_IMPORT,  # bare code must import cadquery
    library_import=_IMPORT,
    library_use=re.compile(r"\b(?:cq|cadquery)\."),
)


def import_failure(message: str) -> DependencyError | None:
    """The DependencyError for a worker whose ``import cadquery`` failed with ``message``, else None."""
    if not re.search(r"\b(?:ModuleNotFoundError|ImportError|No module named)\b|\.so\b", message):
        return None
    fix = INSTALL_HINT
    if re.search(r"\blib[\w.+-]*\.so", message):
        fix = "install the system library it names (e.g. apt-get install libgl1 libxrender1), or " + fix
    return DependencyError(f"cadquery cannot be imported ({message.strip()[-300:]}): {fix}")


class CadQueryExecutor(Executor):
    language = "cadquery"
    aliases = ("python", "py", "cq")
    suffixes = (".py",)
    syntax = SYNTAX
    description = "CadQuery (Python) programs, forked from warm sandboxed workers"

    def default_limits(self) -> Limits:
        """:class:`Limits` defaults: 30 s, 2048 MiB (importing CadQuery needs ~1.5 GiB), no network."""
        return Limits()

    def runtime_key(self) -> Hashable:
        return (sys.executable, os.environ.get("PYTHONPATH", ""))

    def _probe_runtime(self) -> None:
        # Import it the way a worker does (same interpreter and environment) but in a throw-away
        # process: a worker left in this process would be inherited by the engine's forked workers.
        from gen3deval.execute.cadquery_pool import _worker_env

        try:
            proc = subprocess.run(
                [sys.executable, "-c", "import cadquery, OCP"],
                capture_output=True,
                text=True,
                timeout=300,
                env=_worker_env(),
                cwd=tempfile.gettempdir(),
            )
        except subprocess.TimeoutExpired:
            raise DependencyError(f"importing cadquery took over 300 s with {sys.executable}") from None
        except OSError as exc:
            raise DependencyError(f"cannot start {sys.executable} to import cadquery: {exc}") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise import_failure(last) or DependencyError(
                f"cadquery cannot be imported by {sys.executable} ({last[-300:]}): {INSTALL_HINT}"
            )

    def _run_one(self, program: str, limits: Limits) -> ExecResult:
        return self._run_one_as(program, limits, "candidate")

    def _run_all(self, programs: list[str], limits: Limits, jobs: int) -> list[ExecResult]:
        return self._run_all_as(programs, limits, jobs, "candidate")

    # Warm workers keep state between programs: each role has its own pool.
    def _run_one_as(self, program: str, limits: Limits, role: str) -> ExecResult:
        from gen3deval.execute.cadquery_pool import run_cadquery

        return run_cadquery(program, limits, role=role)

    def _run_all_as(self, programs: list[str], limits: Limits, jobs: int, role: str) -> list[ExecResult]:
        from gen3deval.execute.cadquery_pool import run_cadquery_many

        return run_cadquery_many(programs, limits, jobs, role=role)


EXECUTOR = CadQueryExecutor()

__all__ = ["EXECUTOR", "INSTALL_HINT", "SYNTAX", "CadQueryExecutor", "import_failure"]
