"""The executor registry: one place lists the languages; everything else reads it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gen3deval import execute
from gen3deval.config import Protocol, validate_protocol
from gen3deval.errors import ConfigError
from gen3deval.execute import (
    EXECUTORS,
    LANGUAGES,
    default_limits,
    extract_code,
    language_for_suffix,
    program_suffix,
    run,
    run_many,
)
from gen3deval.execute.base import Executor
from gen3deval.execute.registry import language_named, program_suffixes
from gen3deval.systems.base import PROGRAM_SUFFIX, Candidate


def test_the_registry_lists_both_languages() -> None:
    assert LANGUAGES == ("cadquery", "threejs")
    assert list(EXECUTORS) == ["cadquery", "threejs"]
    for name, ex in EXECUTORS.items():
        assert isinstance(ex, Executor) and ex.language == name
        assert ex.suffix == ex.suffixes[0]
        assert ex.syntax.fence_tags, name


@pytest.mark.parametrize(
    ("suffix", "language"),
    [
        (".py", "cadquery"),
        (".PY", "cadquery"),
        ("py", "cadquery"),
        (".js", "threejs"),
        (".mjs", "threejs"),
        (".cjs", "threejs"),
        (".txt", None),
        (".glb", None),
        ("", None),
    ],
)
def test_language_for_suffix(suffix: str, language: str | None) -> None:
    assert language_for_suffix(suffix) == language


def test_program_suffix_and_its_inverse() -> None:
    assert program_suffix("threejs") == ".js"
    assert program_suffix("cadquery") == ".py"
    for lang in LANGUAGES:
        assert language_for_suffix(program_suffix(lang)) == lang
    assert program_suffixes() == {".py": "cadquery", ".js": "threejs", ".mjs": "threejs", ".cjs": "threejs"}
    assert PROGRAM_SUFFIX == {"cadquery": ".py", "threejs": ".js"}
    with pytest.raises(
        ConfigError, match=r"unknown program language 'rust'; expected one of cadquery, threejs"
    ):
        program_suffix("rust")


def test_aliases() -> None:
    assert language_named("JavaScript") == "threejs"
    assert language_named("python") == "cadquery"
    assert language_named("cq") == "cadquery"
    assert language_named("rust") is None


def test_unknown_language_is_a_config_error_everywhere() -> None:
    for call in (
        lambda: run("x = 1", "rust"),
        lambda: run(None, "rust"),
        lambda: run_many(["x"], "rust"),
        lambda: default_limits("rust"),
        lambda: execute.check_runtime("rust"),
    ):
        with pytest.raises(ConfigError, match="unknown program language 'rust'"):
            call()
    with pytest.raises(ValueError, match="unknown language 'rust'; expected one of cadquery, threejs"):
        extract_code("x", "rust")


def test_no_code_needs_no_runtime() -> None:
    # Empty programs never start a sandbox (so they give no_code even where the runtime is missing).
    for lang in LANGUAGES:
        r = run("  \n", lang)
        assert (r.executable, r.error_class, r.language) == (False, "no_code", lang)
        rs = run_many([None, ""], lang, jobs=2)
        assert [x.error_class for x in rs] == ["no_code", "no_code"]


def test_default_limits_per_language() -> None:
    assert default_limits("threejs").wall_s == 10.0
    assert default_limits("cadquery").wall_s == 30.0
    assert default_limits("cadquery").memory_mb == 2048


def test_candidate_and_protocol_validation_use_the_registry() -> None:
    assert Candidate(program="x", language="cadquery").kind == "program"
    with pytest.raises(ValueError, match="program language must be one of cadquery, threejs, got 'rust'"):
        Candidate(program="x", language="rust")
    validate_protocol(Protocol(name="t", language="threejs"))
    with pytest.raises(ConfigError, match="known: cadquery, threejs"):
        validate_protocol(Protocol(name="t", language="rust"))


def test_extraction_reads_the_fence_tags_of_the_registry() -> None:
    """Every fence tag an executor declares selects its block, and only for that language."""
    js = "function createObject(THREE) { return new THREE.Mesh(); }"
    py = "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)"
    for lang, ex in EXECUTORS.items():
        code, other = (js, py) if lang == "threejs" else (py, js)
        other_lang = next(n for n in LANGUAGES if n != lang)
        for tag in sorted(ex.syntax.fence_tags):
            answer = f"Here it is:\n\n```{tag}\n{code}\n```\n\n```text\n{other}\n```"
            assert extract_code(answer, lang) == code + "\n", (lang, tag)
            assert extract_code(f"```{tag}\n{code}\n```", other_lang) is None, (lang, tag)


def test_exec_cli_lang_choices_and_help_come_from_the_registry() -> None:
    from gen3deval.commands import exec_cmd

    p = argparse.ArgumentParser()
    exec_cmd.add_arguments(p)
    lang = next(a for a in p._actions if a.dest == "lang")
    assert list(lang.choices or []) == list(EXECUTORS)
    assert ".mjs -> threejs" in (lang.help or "")
    assert "1 when it is not" in (p.epilog or "")
    assert exec_cmd._language(argparse.Namespace(lang=None), Path("a.MJS")) == "threejs"
