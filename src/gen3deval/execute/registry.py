"""The executors by language: the one place that lists the program languages gen3deval can run.

Everything that depends on the language (the CLI's ``--lang`` choices, file suffixes of programs, the
code extraction's fence tags, protocol and manifest validation, the engine's runtime checks) reads it
from here::

    EXECUTORS["threejs"].run(program)         # ExecResult
    check_runtime("cadquery")                  # DependencyError naming the fix, else None (cached)
    language_for_suffix(".py")                 # "cadquery"; None for a suffix no executor runs
    program_suffix("threejs")                  # ".js"

A new language is a module with an :class:`~gen3deval.execute.base.Executor` subclass and its
``EXECUTOR`` instance, added to ``_MODULES`` below.
"""

from __future__ import annotations

from gen3deval.errors import ConfigError
from gen3deval.execute import cadquery_executor, threejs_executor
from gen3deval.execute.base import Executor

_MODULES = (cadquery_executor, threejs_executor)

EXECUTORS: dict[str, Executor] = {m.EXECUTOR.language: m.EXECUTOR for m in _MODULES}
"""Language name -> its executor, in alphabetical order."""

LANGUAGES: tuple[str, ...] = tuple(EXECUTORS)


def get_executor(language: str) -> Executor:
    """The executor of ``language``; ConfigError naming the known languages otherwise."""
    try:
        return EXECUTORS[language]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown program language {language!r}; expected one of {', '.join(EXECUTORS)}"
        ) from None


def language_named(name: str) -> str | None:
    """The language called ``name`` (its own name or an alias such as ``js``, ``python``; any case),
    or None."""
    key = name.lower().strip()
    for ex in EXECUTORS.values():
        if key == ex.language or key in ex.aliases:
            return ex.language
    return None


def language_for_suffix(suffix: str) -> str | None:
    """The language of program files ending in ``suffix`` (``".py"`` -> ``"cadquery"``, ``".mjs"`` ->
    ``"threejs"``; case-insensitive, the dot optional), or None when no executor runs such files."""
    s = suffix.lower()
    if s and not s.startswith("."):
        s = "." + s
    for ex in EXECUTORS.values():
        if s in ex.suffixes:
            return ex.language
    return None


def program_suffix(language: str) -> str:
    """The suffix programs of ``language`` are written with (``"threejs"`` -> ``".js"``)."""
    return get_executor(language).suffix


def program_suffixes() -> dict[str, str]:
    """Every program suffix -> its language (``{".py": "cadquery", ".js": "threejs", ...}``)."""
    return {s: ex.language for ex in EXECUTORS.values() for s in ex.suffixes}


def check_runtime(language: str) -> None:
    """Raise DependencyError (what is missing, and the fix) unless programs of ``language`` can run here;
    ConfigError for an unknown language. The first success is cached per process, so calling it before
    every run is cheap."""
    get_executor(language).check_runtime()


__all__ = [
    "EXECUTORS",
    "LANGUAGES",
    "check_runtime",
    "get_executor",
    "language_for_suffix",
    "language_named",
    "program_suffix",
    "program_suffixes",
]
