"""The Three.js executor: programs ``function createObject(THREE)`` run by :mod:`gen3deval.execute.threejs`
(a fresh sandboxed Node per program; the contract is ``docs/threejs-contract.md``).

Its runtime is Node >= 20.11 plus three's npm package in the scaffold folder (``make setup`` in a
checkout; ``npm ci --prefix <scaffold>`` for an installed package; ``GEN3DEVAL_THREEJS_SCAFFOLD``
points to another folder holding ``node_modules/three``, ``GEN3DEVAL_NODE`` to another node).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Hashable

from gen3deval.errors import DependencyError, ExecutionError
from gen3deval.execute.base import CodeSyntax, Executor
from gen3deval.execute.result import ExecResult, Limits

_ENTRY = re.compile(
    r"\bfunction\s*\*?\s*createObject\b|\bcreateObject\s*[:=]|^\s*(?:async\s+)?createObject\s*\([^)]*\)\s*\{",
    re.M,
)

SYNTAX = CodeSyntax(
    fence_tags=frozenset(
        {
            "js",
            "javascript",
            "mjs",
            "cjs",
            "jsx",
            "ts",
            "typescript",
            "node",
            "nodejs",
            "es6",
            "threejs",
            "three",
        }
    ),
    entry=_ENTRY,
    signs=re.compile(r"\b(?:const|let|var|function|new|return)\b|=>|;\s*$|\bTHREE\.", re.M),
    only=re.compile(r"\b(?:const|let|var)\s+\w+\s*=|=>|\bfunction\s+\w+\s*\(|\bTHREE\.\w"),
    defs=re.compile(
        r"^(?:export\s+)?(?:async\s+)?(?:function\s*\*?\s*|class\s+|const\s+|let\s+|var\s+)([A-Za-z_$][\w$]*)",
        re.M,
    ),
    binds=re.compile(r"\b(?:function\s*\*?\s*|class\s+|const\s+|let\s+|var\s+)([A-Za-z_$][\w$]*)"),
    code_line=re.compile(
        r"^\s*(?:import\b|export\b|const\b|let\b|var\b|function\b|async\b|class\b|return\b|if\b|for\b|while\b|"
        r"//|/\*|\*|[}\])]|[\w$.\[\]]+\s*(?:=|\+=|-=|\()|\w+\.\w+)|[;{}(,]\s*$"
    ),
    comments=re.compile(r"/\*.*?\*/|//[^\n]*", re.S),
    bare_requires=_ENTRY,  # bare code must define the entry point
    html_scripts=True,
    calls_entry=re.compile(r"\bcreateObject\s*\("),
)


class ThreeJSExecutor(Executor):
    language = "threejs"
    aliases = ("three", "js", "javascript")
    suffixes = (".js", ".mjs", ".cjs")
    syntax = SYNTAX
    description = "Three.js programs `function createObject(THREE)`, a fresh sandboxed Node per program"

    def default_limits(self) -> Limits:
        """10 s wall/CPU, 2048 MiB address space (Node needs >= 768), no network."""
        from gen3deval.execute.threejs import default_limits

        return default_limits()

    def runtime_key(self) -> Hashable:
        return (
            os.environ.get("GEN3DEVAL_NODE") or shutil.which("node"),
            os.environ.get("GEN3DEVAL_THREEJS_SCAFFOLD", ""),
            os.environ.get("GEN3DEVAL_THREEJS_CACHE", ""),
        )

    def _probe_runtime(self) -> None:
        from gen3deval.execute import threejs

        try:
            # node found and new enough, three installed, the bundle written to a cache the sandbox
            # uid can read: everything a program needs before its own code runs.
            threejs.runtime()
        except ExecutionError as exc:  # no usable cache folder: the environment, not a program
            raise DependencyError(str(exc)) from None

    def _run_one(self, program: str, limits: Limits) -> ExecResult:
        from gen3deval.execute.threejs import run_threejs

        return run_threejs(program, limits)

    def _run_all(self, programs: list[str], limits: Limits, jobs: int) -> list[ExecResult]:
        from gen3deval.execute.threejs import run_threejs_many

        return run_threejs_many(programs, limits, jobs=jobs)


EXECUTOR = ThreeJSExecutor()

__all__ = ["EXECUTOR", "SYNTAX", "ThreeJSExecutor"]
