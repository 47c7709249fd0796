"""``gen3deval run`` inputs (issue 8): system strings, default run folders, suite sets, the seeded sample, and
the README's own examples."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import trimesh
import yaml

from gen3deval.cli import build_parser, main
from gen3deval.commands.run_cmd import _default_out, default_suite_folder, resolve_spec
from gen3deval.config import build_spec
from gen3deval.engine.build import spec_json
from gen3deval.engine.store import Store

REPO = Path(__file__).resolve().parents[1]


def _args(*argv: str) -> object:
    return build_parser().parse_args(["run", *argv])


# --- default run folders ----------------------------------------------------------------------------------


def test_default_folders_of_two_manifests_differ_and_are_stable(tmp_path: Path, monkeypatch) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    a = _default_out(_args("--suite", "manifest:a/manifest.jsonl"))
    b = _default_out(_args("--suite", "manifest:b/manifest.jsonl"))
    assert a != b
    assert re.fullmatch(r"runs/manifest-a-[0-9a-f]{8}", str(a)) and re.fullmatch(
        r"runs/manifest-b-[0-9a-f]{8}", str(b)
    )
    # The same source named another way (absolute, from another working folder) keeps its folder.
    assert _default_out(_args("--suite", f"manifest:{tmp_path / 'a' / 'manifest.jsonl'}")) == a
    monkeypatch.chdir(tmp_path / "b")
    assert _default_out(_args("--suite", "manifest:../a/manifest.jsonl")) == a
    # Folder specs, several suites, built-ins, spec files.
    assert default_suite_folder(["quickstart"]) == "quickstart"
    assert default_suite_folder(["images:/data/photos/"]).startswith("images-photos-")
    two = default_suite_folder(["manifest:/x/m.jsonl", "images:/y"])
    assert two.startswith("manifest-x-m-+1-") and two != default_suite_folder(
        ["manifest:/x/m.jsonl", "images:/z"]
    )
    assert _default_out(_args("spec.yaml")) == Path("runs/spec")


def _box_manifest(folder: Path) -> Path:
    folder.mkdir(parents=True)
    trimesh.creation.box(extents=(1, 2, 3)).export(folder / "box.glb")
    (folder / "manifest.jsonl").write_text(
        json.dumps({"id": "box", "category": "c", "path": "box.glb"}) + "\n"
    )
    return folder / "manifest.jsonl"


def _run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["run", *argv, "--quiet", "--jobs", "1"])
    return code, err.getvalue()


def test_resuming_a_folder_with_another_suite_warns(tmp_path: Path) -> None:
    a = _box_manifest(tmp_path / "a")
    b = _box_manifest(tmp_path / "b")
    spec = tmp_path / "cheap.yaml"
    spec.write_text(
        "systems: [oracle]\n"
        "protocol: {name: default, samples: 500, iou_resolution: 16, render_size: 32, rig: null, image_metrics: []}\n"
    )
    out = str(tmp_path / "run")
    code, err = _run(str(spec), "--suite", f"manifest:{a}", "--out", out)
    assert code == 0 and "already holds" not in err
    code, err = _run(str(spec), "--suite", f"manifest:{a}", "--out", out)
    assert code == 0 and "already holds" not in err  # the same suite: a plain resume
    code, err = _run(str(spec), "--suite", f"manifest:{b}", "--out", out)
    assert code == 0
    assert f"warning: {out} already holds results of manifest:{a}; this run adds manifest:{b}" in err


def test_suite_check_leaves_an_unfinished_store_to_the_engine(tmp_path: Path) -> None:
    from gen3deval.commands.run_cmd import suite_change_warning

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "store.sqlite").write_bytes(b"")  # killed before its tables were made
    assert suite_change_warning(tmp_path / "run", [{"kind": "manifest", "source": "/x"}]) is None
    assert suite_change_warning(tmp_path / "new", [{"kind": "manifest", "source": "/x"}]) is None


# --- --limit / --seed -------------------------------------------------------------------------------------


def test_limit_and_seed_are_stored_and_resumed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    spec = resolve_spec(_args("--suite", "quickstart", "--limit", "8", "--seed", "5", "--out", str(out)))
    assert (spec.limit, spec.seed) == (8, 5)
    with Store(out) as store:  # what the engine stores when the run starts
        store.set_meta("spec", spec_json(spec))
    resumed = resolve_spec(_args("--out", str(out)))
    assert (resumed.limit, resumed.seed, resumed.suites) == (8, 5, ("quickstart",))
    assert resolve_spec(_args("--out", str(out), "--seed", "6")).seed == 6
    from gen3deval.engine.build import load_cases

    first = [e.key for e in load_cases(spec.suites, spec.limit, spec.seed)[0]]
    again = [e.key for e in load_cases(resumed.suites, resumed.limit, resumed.seed)[0]]
    assert first == again and len(first) == 8
    assert len({e.case.category for e in load_cases(spec.suites, 8, 5)[0]}) == 8  # one per category


def test_run_help_documents_the_system_form(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "NAME[@LABEL][:KEY=VALUE,...]" in text and "files:dir=outputs/mine,up=z" in text
    assert "--seed S" in text and "stratified across categories" in text


# --- the README's own examples ----------------------------------------------------------------------------


def _readme_run_lines() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("gen3deval run ") and "--system" in line:
            lines.append(shlex.split(line.split("#", 1)[0])[2:])
    return lines


def test_readme_run_commands_build_a_valid_spec(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines = _readme_run_lines()
    assert any(any(a.startswith("files:") for a in argv) for argv in lines), "the bring-your-own example"
    for argv in lines:
        for arg in argv:
            m = re.match(r"files\S*:dir=([^,\s]+)", arg)
            if m:
                Path(m.group(1)).mkdir(parents=True, exist_ok=True)
        spec = resolve_spec(_args(*argv))  # raises ConfigError when the example is wrong
        assert spec.systems


def test_readme_spec_example_is_valid(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    block = re.search(r"A run spec \(YAML\):\n\n```yaml\n(.*?)```", text, re.S)
    assert block
    data = yaml.safe_load(block.group(1))
    for item in data["systems"]:
        m = re.match(r"files\S*:dir=(\S+)", item) if isinstance(item, str) else None
        folder = (
            m.group(1) if m else (item.get("settings", {}).get("dir") if isinstance(item, dict) else None)
        )
        if folder:
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    spec = build_spec(data, base_dir=tmp_path)
    assert [s.label for s in spec.systems] == ["oracle", "other_model", "boxes", "files"]
    assert (spec.limit, spec.seed) == (40, 0)
