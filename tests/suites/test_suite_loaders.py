"""Suite loaders on the real shared data and on hand-made bad inputs."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import trimesh

from gen3deval.errors import ConfigError, SuiteError, UserInputError
from gen3deval.suites import SUITE_KIND_HELP, SUITE_KINDS, Case, Suite, load_suite, parse_spec
from testdata import GENCAD, LOWPOLY, SHARED_DATA

BYO = SHARED_DATA / "byo_images"
needs_data = pytest.mark.skipif(not LOWPOLY.is_dir(), reason="shared data not available")


def _box_glb(path: Path, extents: tuple[float, float, float] = (1.0, 2.0, 3.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=extents).export(path)
    return path


# --- real shared data ------------------------------------------------------------------------------------


@needs_data
def test_manifest_lowpoly304_file_and_folder_forms() -> None:
    suite = load_suite(f"manifest:{LOWPOLY / 'manifest.jsonl'}")
    assert isinstance(suite, Suite) and suite.kind == "manifest"
    assert len(suite.cases) == 304
    assert suite.problems == []
    counts = Counter(c.category for c in suite.cases)
    assert len(counts) == 8 and set(counts.values()) == {38}
    # Independent reading of the same file: ids, categories and paths in file order.
    raw = [json.loads(line) for line in (LOWPOLY / "manifest.jsonl").read_text().splitlines() if line.strip()]
    assert [c.id for c in suite.cases] == [r["id"] for r in raw]
    assert [c.category for c in suite.cases] == [r["category"] for r in raw]
    for c, r in zip(suite.cases, raw, strict=True):
        assert c.ref_mesh == str((LOWPOLY / r["path"]).resolve())
        assert Path(c.ref_mesh).is_file()
        assert c.meta["license"] == "CC0-1.0" and c.meta["up"] == "y"
        assert "id" not in c.meta and "path" not in c.meta
    folder = load_suite(f"manifest:{LOWPOLY}")
    assert folder.cases == suite.cases and folder.source == suite.source
    assert suite.name == "manifest:lowpoly304"
    assert suite.description == "manifest:lowpoly304 (304 cases, 8 categories)"


@needs_data
def test_gencad100() -> None:
    suite = load_suite(f"gencad:{GENCAD}")
    raw = [json.loads(line) for line in GENCAD.read_text().splitlines() if line.strip()]
    assert len(suite.cases) == 100 and suite.problems == []
    assert [c.id for c in suite.cases] == [str(r["question_id"]) for r in raw]
    for c, r in zip(suite.cases, raw, strict=True):
        assert c.ref_code == r["ground_truth"] and "solid" in c.ref_code
        assert c.ref_code_lang == "cadquery"
        assert c.prompt == r["text"]
        assert c.ref_mesh is None
        assert c.image is None  # no image files ship with gencad100: the engine renders the reference
        assert c.meta["image"] == r["image"]


@needs_data
def test_gencad_image_next_to_jsonl(tmp_path: Path) -> None:
    lines = GENCAD.read_text().splitlines()[:3]
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n")
    first = json.loads(lines[0])
    (tmp_path / first["image"]).write_bytes(b"\x89PNG\r\n")
    second = json.loads(lines[1])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / second["image"]).write_bytes(b"\x89PNG\r\n")
    suite = load_suite(f"gencad:{tmp_path / 'cases.jsonl'}")
    assert suite.cases[0].image == str((tmp_path / first["image"]).resolve())
    assert suite.cases[1].image == str((tmp_path / "images" / second["image"]).resolve())
    assert suite.cases[2].image is None


@needs_data
def test_byo_images() -> None:
    suite = load_suite(f"images:{BYO}")
    files = sorted(p for p in BYO.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    assert len(suite.cases) == 10 == len(files)
    assert [c.id for c in suite.cases] == sorted(p.stem for p in files)
    for c in suite.cases:
        assert c.category == "default" and c.ref_mesh is None and c.ref_code is None
        assert Path(c.image or "").is_file() and Path(c.image or "").stem == c.id
    assert "F+Q9fJ" in {c.id for c in suite.cases}


# --- images: folder errors -------------------------------------------------------------------------------


def test_images_sharing_a_stem_are_all_kept_with_a_warning(tmp_path: Path) -> None:
    """Issue 10: two photos with the same stem are both kept (ids disambiguated by suffix), never skipped."""
    from PIL import Image

    for name in ("a.jpg", "a.PNG", "b.webp"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(
            tmp_path / name, format=Image.registered_extensions()[Path(name).suffix.lower()]
        )
    for name in ("notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    suite = load_suite(f"images:{tmp_path}")
    assert [c.id for c in suite.cases] == ["a_jpg", "a_png", "b"]
    assert [Path(str(c.image)).name for c in suite.cases] == ["a.jpg", "a.PNG", "b.webp"]
    assert len(suite.problems) == 1
    assert (
        "'a'" in suite.problems[0]
        and "a.jpg as 'a_jpg'" in suite.problems[0]
        and "a.PNG as 'a_png'" in suite.problems[0]
    )


def test_images_disambiguated_id_that_is_taken_is_an_error(tmp_path: Path) -> None:
    for name in ("a.jpg", "a.png", "a_jpg.webp"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(SuiteError) as err:
        load_suite(f"images:{tmp_path}")
    msg = str(err.value)
    assert str(tmp_path) in msg and "'a_jpg'" in msg and "a.jpg" in msg and "a.png" in msg


def test_images_suffixes_and_hidden(tmp_path: Path) -> None:
    for name in ("a.JPEG", "b.webp", "c.png", "d.gif", ".e.png"):
        (tmp_path / name).write_bytes(b"x")
    suite = load_suite(f"images:{tmp_path}")
    assert [c.id for c in suite.cases] == ["a", "b", "c"]


def test_images_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="no images found"):
        load_suite(f"images:{tmp_path}")
    with pytest.raises(SuiteError, match="folder not found"):
        load_suite(f"images:{tmp_path / 'nope'}")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(SuiteError, match="not a folder"):
        load_suite(f"images:{tmp_path / 'f.png'}")


# --- meshes: Toys4k-style folder with captions -----------------------------------------------------------


def _mesh_folder(root: Path) -> Path:
    _box_glb(root / "box.glb")
    _box_glb(root / "furniture" / "chair.glb")
    trimesh.creation.box().export(root / "furniture" / "table.obj")
    (root / "toys" / "duck_001").mkdir(parents=True)
    trimesh.creation.icosphere().export(root / "toys" / "duck_001" / "mesh.ply")
    (root / "toys" / "duck_001" / "notes.txt").write_text("not a mesh")
    _box_glb(root / ".cache" / "ignored.glb")
    (root / "captions.csv").write_text(
        "id,caption,category\n"
        "box,a plain box,\n"
        "chair,a wooden chair,\n"
        ",no id here,\n"  # line 4: missing id
        "chair,again,\n"  # line 5: duplicate
        "ghost,a caption without mesh,\n"  # line 6: unknown id
        "duck_001,a yellow duck,animals\n"  # line 7: category overrides the folder
        "table,too,many,columns\n"  # line 8: wrong column count
        '"table","a table, with a comma",\n'
    )
    return root


def test_meshes_folder_with_captions_and_subfolders(tmp_path: Path) -> None:
    root = _mesh_folder(tmp_path / "m")
    suite = load_suite(f"meshes:{root}", up="z")
    by_id = {c.id: c for c in suite.cases}
    assert set(by_id) == {"box", "chair", "table", "duck_001"}
    assert by_id["box"].category == "default"
    assert by_id["chair"].category == "furniture" and by_id["table"].category == "furniture"
    assert by_id["duck_001"].category == "animals"  # from captions.csv, over the folder "toys"
    assert by_id["box"].caption == "a plain box"
    assert by_id["table"].caption == "a table, with a comma"
    assert by_id["duck_001"].caption == "a yellow duck"
    assert by_id["duck_001"].ref_mesh == str(root.resolve() / "toys" / "duck_001" / "mesh.ply")
    # glTF is +Y up whatever the option; the other formats follow `up`.
    assert by_id["box"].meta["up"] == "y" and by_id["table"].meta["up"] == "z"
    assert by_id["duck_001"].meta["up"] == "z"
    captions = root / "captions.csv"
    probs = "\n".join(suite.problems)
    assert f"{captions}:4: missing or invalid id" in probs
    assert f"{captions}:5: duplicate id 'chair'" in probs
    assert f"{captions}:6: id 'ghost' has no mesh file" in probs
    assert f"{captions}:8: expected 3 columns, found 4" in probs
    assert "differs from 'animals'" in probs
    assert len(suite.problems) == 5
    for c in suite.cases:
        assert trimesh.load(c.ref_mesh, force="mesh").faces.shape[0] > 0


def test_meshes_captions_option_and_bad_header(tmp_path: Path) -> None:
    root = tmp_path / "m"
    _box_glb(root / "a.glb")
    other = tmp_path / "caps.csv"
    other.write_text("ID,Caption\na,from the option\n")
    suite = load_suite(f"meshes:{root}", captions=str(other))
    assert suite.cases[0].caption == "from the option"
    bad = tmp_path / "bad.csv"
    bad.write_text("name,text\na,b\n")
    with pytest.raises(SuiteError, match=r"bad\.csv:1: captions header must have columns id and caption"):
        load_suite(f"meshes:{root}", captions=str(bad))
    with pytest.raises(SuiteError, match="captions file not found"):
        load_suite(f"meshes:{root}", captions=str(tmp_path / "missing.csv"))


def test_meshes_duplicate_ids(tmp_path: Path) -> None:
    _box_glb(tmp_path / "a" / "chair.glb")
    _box_glb(tmp_path / "b" / "chair.glb")
    with pytest.raises(SuiteError, match=r"duplicate mesh id 'chair': a/chair\.glb and b/chair\.glb"):
        load_suite(f"meshes:{tmp_path}")


# --- manifest: bad entries recorded with file and line ----------------------------------------------------


def test_manifest_bad_lines_are_recorded(tmp_path: Path) -> None:
    _box_glb(tmp_path / "objs" / "a.glb")
    _box_glb(tmp_path / "objs" / "b.glb")
    lines = [
        json.dumps({"id": "a", "category": "x", "path": "objs/a.glb", "caption": "an a", "pack": "p1"}),  # 1
        '{"id": "broken", "path": ',  # 2: invalid JSON
        json.dumps({"category": "x", "path": "objs/a.glb"}),  # 3: missing id
        json.dumps({"id": "a", "category": "x", "path": "objs/b.glb"}),  # 4: duplicate id
        json.dumps({"id": "c", "category": "x"}),  # 5: missing path
        json.dumps({"id": "d", "category": "y", "path": "objs/missing.glb"}),  # 6: file missing, kept
        json.dumps(["not", "an", "object"]),  # 7
        "",  # 8: blank, ignored
        json.dumps({"id": 7, "path": "objs/b.glb", "image": "img/7.png", "prompt": "make b"}),  # 9: int id
        json.dumps({"id": "e", "path": 5}),  # 10: wrong type
        json.dumps({"id": "f", "path": "objs/b.glb", "up": "x"}),  # 11: bad up
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    suite = load_suite(f"manifest:{manifest}")
    assert [c.id for c in suite.cases] == ["a", "d", "7"]
    a, d, seven = suite.cases
    assert a.caption == "an a" and a.meta["pack"] == "p1" and a.category == "x"
    assert d.ref_mesh == str(tmp_path.resolve() / "objs" / "missing.glb") and not Path(d.ref_mesh).exists()
    assert seven.category == "default" and seven.prompt == "make b"
    assert seven.image == str(tmp_path.resolve() / "img" / "7.png")
    problems = suite.problems
    expect = {
        2: "invalid JSON",
        3: "missing 'id'",
        4: "duplicate id 'a' (first at",
        5: "missing 'path'",
        6: "path file not found",
        7: "expected a JSON object, found list",
        9: "image file not found",
        10: "'path' must be a string",
        11: "'up' must be 'y' or 'z'",
    }
    for line, reason in expect.items():
        assert any(p.startswith(f"{manifest}:{line}: ") and reason in p for p in problems), (line, problems)
    assert len(problems) == len(expect)


def test_manifest_json_list_and_cases_object(tmp_path: Path) -> None:
    _box_glb(tmp_path / "a.glb")
    entries = [
        {"id": "a", "path": "a.glb"},
        {"id": "", "path": "a.glb"},
        {"id": "b", "path": str(tmp_path / "a.glb")},
    ]
    (tmp_path / "m.json").write_text(json.dumps(entries))
    suite = load_suite(f"manifest:{tmp_path / 'm.json'}")
    assert [c.id for c in suite.cases] == ["a", "b"]
    assert suite.problems == [
        f"{tmp_path / 'm.json'}:entry 2: invalid id '' (expected a non-empty string or an integer); entry skipped"
    ]
    (tmp_path / "n.json").write_text(json.dumps({"cases": entries[:1]}))
    assert [c.id for c in load_suite(f"manifest:{tmp_path / 'n.json'}").cases] == ["a"]
    (tmp_path / "bad.json").write_text('{"id": 1')
    with pytest.raises(SuiteError, match=r"bad\.json:1: invalid JSON"):
        load_suite(f"manifest:{tmp_path / 'bad.json'}")


def test_manifest_all_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text("nope\n{}\n")
    with pytest.raises(SuiteError, match="no usable cases") as err:
        load_suite(f"manifest:{tmp_path}")
    assert "manifest.jsonl:1: invalid JSON" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SuiteError, match=r"has no manifest\.jsonl or manifest\.json"):
        load_suite(f"manifest:{empty}")


def test_manifest_reference_code_entry(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "p", "ref_code": "solid = 1", "ref_code_lang": "cadquery"})
        + "\n"
        + json.dumps({"id": "q", "ref_code": "x", "ref_code_lang": "basic"})
        + "\n"
    )
    suite = load_suite(f"manifest:{tmp_path / 'm.jsonl'}")
    assert [(c.id, c.ref_code_lang, c.ref_mesh) for c in suite.cases] == [("p", "cadquery", None)]
    assert "ref_code_lang must be one of" in suite.problems[0]


# --- load_suite: specs and options -------------------------------------------------------------------------


@needs_data
def test_options_limit_and_categories() -> None:
    spec = f"manifest:{LOWPOLY}"
    # limit is a stratified sample (tests/suites/test_suite_inputs.py), no longer the first N lines.
    order = [c.id for c in load_suite(spec).cases]
    five = [c.id for c in load_suite(spec, limit=5).cases]
    assert len(five) == 5 and five == [i for i in order if i in five]
    food = load_suite(spec, categories="food, tool")
    assert {c.category for c in food.cases} == {"food", "tool"} and len(food.cases) == 76
    both = load_suite(spec, categories=["food"], limit=3)
    assert len(both.cases) == 3 and {c.category for c in both.cases} == {"food"}
    assert both.options["limit"] == 3 and both.options["categories"] == ["food"]
    with pytest.raises(ConfigError, match=r"categories \['fod'\] not found; known: character, container"):
        load_suite(spec, categories="fod")
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="limit"):
            load_suite(spec, limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="up='x'"):
        load_suite(spec, up="x")
    with pytest.raises(ConfigError, match="'captions' does not apply to suite kind 'manifest'"):
        load_suite(spec, captions="x.csv")


def test_spec_errors(tmp_path: Path) -> None:
    for spec, pattern in [
        ("", "empty"),
        ("nonsense", "expected KIND:PATH or a built-in name"),
        ("foo:bar", "unknown suite kind 'foo'"),
        ("manifest:", "missing the path"),
        ("quickstart:x", "takes no path"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            load_suite(spec)
    with pytest.raises(ConfigError, match=r"prefix it with a kind"):
        load_suite(str(tmp_path))
    with pytest.raises(SuiteError, match="file not found"):
        load_suite(f"manifest:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(SuiteError, match="file not found"):
        load_suite(f"gencad:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(ConfigError, match="'up' does not apply to suite kind 'images'"):
        load_suite(f"images:{tmp_path}", up="z")
    # Every suite error is a user error (one line, exit code 2 on the CLI).
    assert issubclass(SuiteError, UserInputError) and issubclass(ConfigError, UserInputError)
    assert parse_spec("meshes:~/x")[1] == Path("~/x").expanduser()
    assert parse_spec(" quickstart ") == ("quickstart", None)


def test_gencad_bad_lines(tmp_path: Path) -> None:
    good = {
        "question_id": 1,
        "text": "make it",
        "ground_truth": "import cadquery as cq\nsolid=cq.Workplane().box(1,1,1)\n",
    }
    f = tmp_path / "g.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps(good),
                json.dumps({**good, "question_id": 1}),  # 2 duplicate
                json.dumps({"text": "x", "ground_truth": "y"}),  # 3 no id
                json.dumps({"question_id": 3, "text": "x"}),  # 4 no ground truth
                "{",  # 5 invalid JSON
                json.dumps({**good, "question_id": "q-2", "category": "bracket"}),  # 6 ok
            ]
        )
    )
    suite = load_suite(f"gencad:{f}")
    assert [(c.id, c.category) for c in suite.cases] == [("1", "default"), ("q-2", "bracket")]
    assert [p.split(": ", 1)[0] for p in suite.problems] == [f"{f}:{n}" for n in (2, 3, 4, 5)]
    assert "duplicate question_id '1' (first at line 1)" in suite.problems[0]
    assert "ground_truth" in suite.problems[2]


def test_registry_lists_kinds() -> None:
    assert SUITE_KINDS.names() == ["gencad", "images", "manifest", "meshes", "quickstart", "toys4k"]
    assert set(SUITE_KIND_HELP) == set(SUITE_KINDS.names())
    assert Case(id="x").category == "default"


@needs_data
def test_missing_reference_is_kept_for_the_engine(tmp_path: Path) -> None:
    # A manifest copied elsewhere without its objects: every case kept, every missing file reported.
    shutil.copy(LOWPOLY / "manifest.jsonl", tmp_path / "manifest.jsonl")
    suite = load_suite(f"manifest:{tmp_path}", limit=4)
    assert len(suite.cases) == 4
    assert all(not Path(c.ref_mesh or "").exists() for c in suite.cases)
    assert len(suite.problems) == 304 and all("path file not found" in p for p in suite.problems)
