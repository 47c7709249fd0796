"""The executor interface: one :class:`Executor` per program language (PROTOCOLS.md section 9).

An executor knows its language's names (``language``, ``aliases``), program file ``suffixes`` (the
first is the one programs are written with), how code in that language is recognised in a model's
answer (:class:`CodeSyntax`, read by :mod:`gen3deval.execute.extract`), its default limits, how to
check that its runtime is installed (:meth:`Executor.check_runtime`) and how to run programs. The
registry of executors is :mod:`gen3deval.execute.registry`; a new language is one new module with an
Executor subclass, added there.

A missing runtime (Node, three's npm package, CadQuery) is an environment error:
:meth:`Executor.check_runtime` and :meth:`Executor.run` raise DependencyError naming the fix; a
program's own failure is always an :class:`ExecResult`.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from gen3deval.errors import ConfigError
from gen3deval.execute.result import ExecResult, Limits


@dataclass(frozen=True)
class CodeSyntax:
    """How code of one language is found in a model's answer (see :mod:`gen3deval.execute.extract`).

    Attributes:
        fence_tags: fence info tags that name the language (lower case).
        entry: the program's entry point (``function createObject``, ``import cadquery``); the main block
            is one that matches it.
        signs: weak signs of the language (an untagged block with them belongs unless another
            language's ``only`` matches).
        only: strong signs, found in no other language.
        defs: top-level definitions (one or more groups; the first non-empty group is the name).
        binds: names bound anywhere in a block (same group rule).
        code_line: a line of code, for unfenced answers.
        comments: comments, removed before looking for used names.
        bare_requires: an unfenced answer is code only if it matches this.
        html_scripts: html-tagged blocks (and untagged ones with ``<script>``) give their script bodies.
        calls_entry: a block that matches this without defining the entry is a usage example, never joined.
        library_import / library_use: a block holding the missing library import is joined to a main
            block that uses the library (``cq.``) without importing it.
    """

    fence_tags: frozenset[str]
    entry: re.Pattern[str]
    signs: re.Pattern[str]
    only: re.Pattern[str]
    defs: re.Pattern[str]
    binds: re.Pattern[str]
    code_line: re.Pattern[str]
    comments: re.Pattern[str]
    bare_requires: re.Pattern[str]
    html_scripts: bool = False
    calls_entry: re.Pattern[str] | None = None
    library_import: re.Pattern[str] | None = None
    library_use: re.Pattern[str] | None = None


class Executor(ABC):
    """One program language: its names, suffixes, code syntax, limits, runtime check and sandboxed runs.

    Subclasses set the class attributes and implement :meth:`_probe_runtime`, :meth:`_run_one` and
    :meth:`_run_all`; the heavy language module (Node runtime, CadQuery workers) is imported inside
    them, so listing executors costs nothing.
    """

    language: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    suffixes: ClassVar[tuple[str, ...]]
    syntax: ClassVar[CodeSyntax]
    description: ClassVar[str] = ""

    def __init__(self) -> None:
        # Runtime keys that passed check_runtime in this process (a positive answer is cached; a
        # negative one is not, so installing the missing piece needs no restart).
        self._ok: set[Hashable] = set()
        self._lock = threading.Lock()

    @property
    def suffix(self) -> str:
        """The suffix a program of this language is written with (``.js``, ``.py``)."""
        return self.suffixes[0]

    def default_limits(self) -> Limits:
        """The limits a program runs under unless told otherwise."""
        return Limits()

    # --- runtime ----------------------------------------------------------------------------------

    def runtime_key(self) -> Hashable:
        """What the runtime check depends on (e.g. the node binary and scaffold folder): a positive check
        is cached per process and key."""
        return ()

    @abstractmethod
    def _probe_runtime(self) -> None:
        """Raise DependencyError (what is missing and the fix) unless programs can be run."""

    def check_runtime(self) -> None:
        """Raise DependencyError naming what is missing and the fix when this language's runtime is not
        usable; cheap after the first success in a process (cached per :meth:`runtime_key`)."""
        key = self.runtime_key()
        if key in self._ok:
            return
        with self._lock:
            if key in self._ok:
                return
            self._probe_runtime()
            self._ok.add(key)

    # --- running ----------------------------------------------------------------------------------

    @abstractmethod
    def _run_one(self, program: str, limits: Limits) -> ExecResult:
        """Run one non-empty program."""

    @abstractmethod
    def _run_all(self, programs: list[str], limits: Limits, jobs: int) -> list[ExecResult]:
        """Run non-empty programs ``jobs`` at a time, results in input order."""

    def no_code(self, limits: Limits) -> ExecResult:
        """The result for a missing or empty program."""
        return ExecResult(
            executable=False,
            error_class="no_code",
            message="no program: the answer was missing or empty",
            language=self.language,
            limits=limits,
        )

    # Roles: "reference" programs (a suite's ground truth) and "candidate" programs (what a system
    # generated). An executor that keeps state between programs (warm workers) must run them apart;
    # one that starts a fresh process per program may ignore the role (the default hooks below).
    def _run_one_as(self, program: str, limits: Limits, role: str) -> ExecResult:
        """Run one non-empty program of ``role``; default: :meth:`_run_one` (no state is shared)."""
        return self._run_one(program, limits)

    def _run_all_as(self, programs: list[str], limits: Limits, jobs: int, role: str) -> list[ExecResult]:
        """Run non-empty programs of ``role``; default: :meth:`_run_all` (no state is shared)."""
        return self._run_all(programs, limits, jobs)

    def run(
        self, program: str | None, limits: Limits | None = None, *, role: str = "candidate"
    ) -> ExecResult:
        """Run one program in the sandbox: an ExecResult for every outcome of the program (None or blank:
        ``no_code``); DependencyError when the runtime is missing, ExecutionError when the sandbox fails.
        ``role``: ``"candidate"`` (default) or ``"reference"`` (ConfigError otherwise); reference and
        candidate programs never share a warm worker."""
        role = check_role(role)
        limits = limits or self.default_limits()
        if program is None or not program.strip():
            return self.no_code(limits)
        return self._run_one_as(program, limits, role)

    def run_many(
        self,
        programs: Sequence[str | None],
        limits: Limits | None = None,
        jobs: int = 1,
        *,
        role: str = "candidate",
    ) -> list[ExecResult]:
        """Run many programs ``jobs`` at a time, results in input order; None/blank entries give
        ``no_code`` without running anything. ``role`` as in :meth:`run`."""
        role = check_role(role)
        limits = limits or self.default_limits()
        out = [self.no_code(limits) for _ in programs]
        todo = [(i, p) for i, p in enumerate(programs) if p is not None and p.strip()]
        if todo:
            results = self._run_all_as([p for _, p in todo], limits, max(1, int(jobs)), role)
            for (i, _), r in zip(todo, results, strict=True):
                out[i] = r
        return out


ROLES = ("candidate", "reference")


def check_role(role: str) -> str:
    """``role`` when it is one of :data:`ROLES`; ConfigError naming them otherwise."""
    if role not in ROLES:
        raise ConfigError(f"unknown program role {role!r}; expected one of {', '.join(ROLES)}")
    return role


__all__ = ["ROLES", "CodeSyntax", "Executor", "check_role"]
