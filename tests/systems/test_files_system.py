"""The ``files`` system: one output per case id, any mesh suffix or a program; missing -> missing_output."""

from __future__ import annotations

from pathlib import Path

import pytest

from gen3deval.errors import ConfigError
from gen3deval.suites.base import Case
from gen3deval.systems.base import SYSTEMS, Candidate, GenerationFailed, create_system


def test_finds_meshes_and_programs_by_case_id(tmp_path: Path) -> None:
    (tmp_path / "a.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "a.stl").write_text("solid x\nendsolid x\n")  # .obj comes first in the suffix order
    (tmp_path / "b.js").write_text("function createObject(THREE) { return new THREE.Group(); }")
    (tmp_path / "c.py").write_text("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n")
    (tmp_path / "d.GLB").write_bytes(b"x")  # suffixes are matched exactly (lower case)
    sys_ = create_system("files", {"dir": str(tmp_path), "up": "z"})
    a = sys_.generate(Case(id="a"), None, tmp_path)
    assert a == Candidate(mesh_path=str(tmp_path / "a.obj"), up="z", meta={"file": str(tmp_path / "a.obj")})
    b = sys_.generate(Case(id="b"), None, tmp_path)
    assert (b.kind, b.language) == ("program", "threejs") and "createObject" in (b.program or "")
    c = sys_.generate(Case(id="c"), None, tmp_path)
    assert (c.kind, c.language) == ("program", "cadquery")
    for missing in ("d", "zzz"):
        with pytest.raises(GenerationFailed) as exc:
            sys_.generate(Case(id=missing), None, tmp_path)
        assert exc.value.error_class == "missing_output"
        assert repr(missing) in exc.value.message and str(tmp_path) in exc.value.message


def test_relative_dir_resolves_against_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "outs").mkdir()
    (tmp_path / "outs" / "x.ply").write_text("ply\n")
    sys_ = create_system("files", {"dir": "outs"}, base_dir=tmp_path)
    assert sys_.settings["dir"] == str((tmp_path / "outs").resolve())
    assert sys_.generate(Case(id="x"), None, tmp_path).mesh_path == str(
        (tmp_path / "outs" / "x.ply").resolve()
    )


def test_settings_are_validated(tmp_path: Path) -> None:
    cls = SYSTEMS.get("files")
    with pytest.raises(ConfigError, match=r"^s\.dir: required setting"):
        cls.validate_settings({}, "s", tmp_path)
    with pytest.raises(ConfigError, match=r"^s\.dir: folder not found"):
        cls.validate_settings({"dir": "nope"}, "s", tmp_path)
    with pytest.raises(ConfigError, match=r"^s\.up: expected 'y' or 'z'"):
        cls.validate_settings({"dir": ".", "up": "x"}, "s", tmp_path)
    with pytest.raises(ConfigError, match=r"^s\.colour: unknown setting"):
        cls.validate_settings({"dir": ".", "colour": 1}, "s", tmp_path)
    with pytest.raises(ConfigError, match=r"^s\.dir: expected str"):
        cls.validate_settings({"dir": 3}, "s", tmp_path)


def test_candidate_is_a_mesh_or_a_program() -> None:
    with pytest.raises(ValueError):
        Candidate()
    with pytest.raises(ValueError):
        Candidate(mesh_path="a.glb", program="x", language="threejs")
    with pytest.raises(ValueError):
        Candidate(program="x", language="basic")


# --- raw model answers, attempts, fingerprints, safety, preflight (issue 8, items 2, 11, 12) ---------------

JS_ANSWER = (
    "Here is the object.\n\n```javascript\nfunction createObject(THREE) {\n"
    "  return new THREE.Mesh(new THREE.BoxGeometry(1, 2, 3), new THREE.MeshStandardMaterial());\n}\n```\n"
    "It is a box.\n"
)
PY_ANSWER = "```python\nimport cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3)\n```\n"
OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


def test_raw_answers_go_through_the_code_extraction(tmp_path: Path) -> None:
    from gen3deval.execute import extract_code

    (tmp_path / "a.md").write_text(JS_ANSWER)
    (tmp_path / "b.txt").write_text(PY_ANSWER)
    (tmp_path / "c.md").write_text("I am sorry, I cannot draw that object.\n")
    sys_ = create_system("files", {"dir": str(tmp_path)})
    a = sys_.generate(Case(id="a"), None, tmp_path)
    assert (a.language, a.program) == ("threejs", extract_code(JS_ANSWER, "threejs"))
    assert "```" not in (a.program or "") and "It is a box" not in (a.program or "")
    b = sys_.generate(Case(id="b"), None, tmp_path)
    assert (b.language, b.program) == ("cadquery", extract_code(PY_ANSWER, "cadquery"))
    with pytest.raises(GenerationFailed) as exc:
        sys_.generate(Case(id="c"), None, tmp_path)
    assert exc.value.error_class == "no_code" and str(tmp_path / "c.md") in exc.value.message
    # The `language` setting forces the language: a Three.js answer then holds no CadQuery code.
    forced = create_system("files", {"dir": str(tmp_path), "language": "cadquery"})
    assert forced.generate(Case(id="b"), None, tmp_path).language == "cadquery"
    with pytest.raises(GenerationFailed) as exc:
        forced.generate(Case(id="a"), None, tmp_path)
    assert exc.value.error_class == "no_code" and "cadquery" in exc.value.message
    with pytest.raises(ConfigError, match=r"^s\.language: expected 'cadquery' or 'threejs'"):
        SYSTEMS.get("files").validate_settings({"dir": ".", "language": "basic"}, "s", tmp_path)


def test_several_attempts_per_case(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "1.obj").write_text(OBJ)
    (d / "3.md").write_text(JS_ANSWER)
    (d / "notes.txt").write_text("not an attempt")
    (d / "0.obj").write_text(OBJ)  # attempts count from 1
    (tmp_path / "e.glb").write_bytes(b"flat file")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "2.py").write_text(PY_ANSWER)
    (tmp_path / "f.obj").write_text(OBJ)
    sys_ = create_system("files", {"dir": str(tmp_path)})
    assert [sys_.attempts(Case(id=i)) for i in ("d", "e", "f", "missing")] == [3, 2, 1, 1]
    first = sys_.generate(Case(id="d"), None, tmp_path, attempt=1)
    assert first.mesh_path == str((d / "1.obj").resolve())
    with pytest.raises(GenerationFailed) as exc:
        sys_.generate(Case(id="d"), None, tmp_path, attempt=2)
    assert exc.value.error_class == "missing_output" and "attempt 2" in exc.value.message
    assert sys_.generate(Case(id="d"), None, tmp_path, attempt=3).language == "threejs"
    # The folder wins over the flat file: e's attempt 1 is missing, its attempt 2 a program.
    with pytest.raises(GenerationFailed):
        sys_.generate(Case(id="e"), None, tmp_path, attempt=1)
    assert sys_.generate(Case(id="e"), None, tmp_path, attempt=2).language == "cadquery"
    with pytest.raises(GenerationFailed):
        sys_.generate(Case(id="f"), None, tmp_path, attempt=2)
    warnings = "\n".join(sys_.preflight([Case(id=i) for i in ("d", "e", "f")]))
    assert "0.obj, notes.txt" in warnings and "ignored" in warnings
    assert "case 'e' has both the folder e/ and e.glb" in warnings


def test_input_fingerprint_is_the_content_of_the_file_read(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "a.obj").write_text(OBJ)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.js").write_text("function createObject(THREE) { return null; }")
    sys_ = create_system("files", {"dir": str(tmp_path)})
    fp = sys_.input_fingerprint(Case(id="a"), 1)
    assert fp == "a.obj:" + hashlib.sha256(OBJ.encode()).hexdigest()
    assert sys_.input_fingerprint(Case(id="a"), 1) == fp  # unchanged file, same key
    (tmp_path / "a.obj").write_text(OBJ.replace("f 1 2 3", "f 1 3 2"))
    assert sys_.input_fingerprint(Case(id="a"), 1) not in (fp, "missing")
    assert sys_.input_fingerprint(Case(id="zzz"), 1) == "missing"
    assert sys_.input_fingerprint(Case(id="b"), 1) == "missing"
    assert sys_.input_fingerprint(Case(id="b"), 2).startswith("2.js:")
    # Adding the missing output changes the key (a rerun generates it).
    (tmp_path / "zzz.ply").write_text("ply\n")
    assert sys_.input_fingerprint(Case(id="zzz"), 1).startswith("zzz.ply:")


def test_outputs_are_never_read_outside_the_folder(tmp_path: Path) -> None:
    outs = tmp_path / "outs"
    outs.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "x.obj").write_text(OBJ)
    (secret / "1.obj").write_text(OBJ)
    (tmp_path / "outside.obj").write_text(OBJ)
    (outs / "inside.obj").write_text(OBJ)
    (outs / "a.obj").symlink_to(secret / "x.obj")  # a link pointing outside
    (outs / "b").symlink_to(secret)  # an attempts folder pointing outside
    (outs / "c.obj").symlink_to(outs / "inside.obj")  # a link inside the folder is fine
    sys_ = create_system("files", {"dir": str(outs)})
    for case_id in ("a", "b"):
        with pytest.raises(GenerationFailed) as exc:
            sys_.generate(Case(id=case_id), None, tmp_path)
        assert exc.value.error_class == "missing_output"
        assert "outside the outputs folder" in exc.value.message and str(secret) in exc.value.message
        assert sys_.input_fingerprint(Case(id=case_id), 1) == "unsafe"
    assert sys_.generate(Case(id="c"), None, tmp_path).mesh_path == str((outs / "inside.obj").resolve())
    # Ids are checked by the suite loaders; the system refuses a path-like id on its own too.
    for bad in ("../outside", "../secret/x", "/etc/passwd", ".hidden"):
        with pytest.raises(GenerationFailed) as exc:
            sys_.generate(Case(id=bad), None, tmp_path)
        assert exc.value.error_class == "missing_output"


def test_preflight_warns_when_outputs_match_no_case(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"object_{i:02d}.obj").write_text(OBJ)
    (tmp_path / "README").write_text("not an output")
    (tmp_path / ".hidden.obj").write_text(OBJ)
    sys_ = create_system("files", {"dir": str(tmp_path)})
    cases = [Case(id=f"case_{i}") for i in range(20)]
    warnings = sys_.preflight(cases)
    assert warnings[0].startswith(f"0 of 20 cases have a file in {tmp_path}; 20 files match no case id")
    assert "object_00.obj" in warnings[0] and "case ids look like: case_0" in warnings[0]
    assert len(warnings) == 1
    matched = [Case(id=f"object_{i:02d}") for i in range(20)]
    assert sys_.preflight(matched) == []
    partial = sys_.preflight([*matched[:5], Case(id="extra")])
    assert partial == [
        f"5 of 6 cases have a file in {tmp_path}; 15 files match no case id "
        "(object_05.obj, object_06.obj, object_07.obj, object_08.obj, object_09.obj, ... 10 more)"
    ]


def test_several_files_for_one_case_are_warned_about(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(PY_ANSWER.strip("`\npython"))
    (tmp_path / "a.js").write_text("function createObject(THREE) { return null; }")
    (tmp_path / "a.md").write_text(JS_ANSWER)
    (tmp_path / "m.mjs").write_text("function createObject(THREE) { return null; }")
    sys_ = create_system("files", {"dir": str(tmp_path)})
    chosen = sys_.generate(Case(id="a"), None, tmp_path)
    warnings = sys_.preflight([Case(id="a"), Case(id="m")])
    assert warnings == [
        f"{tmp_path}: case 'a' has several outputs: a.js, a.md, a.py; using {Path(chosen.meta['file']).name}"
    ]
    assert sys_.generate(Case(id="m"), None, tmp_path).language == "threejs"  # every executor suffix
