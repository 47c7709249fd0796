"""``toys4k:DIR`` on a small Toys4k-layout tree built from real lowpoly304 objects written as OBJ."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from gen3deval.errors import ConfigError, SuiteError
from gen3deval.suites import load_suite
from gen3deval.suites.toys4k import choose_caption, parse_captions
from testdata import LOWPOLY, lowpoly_sample

needs_data = pytest.mark.skipif(not LOWPOLY.is_dir(), reason="shared data not available")

HEADER = ["", "sha256", "file_identifier", "aesthetic_score", "captions", "source"]  # pandas writes an index


def _obj_from_glb(row: dict, out: Path) -> tuple[Path, int]:
    """The lowpoly object of ``row`` as ``out`` (OBJ, trimesh's writer); returns (path, its face count)."""
    import trimesh

    from gen3deval.mesh.io import load_mesh

    mesh = load_mesh(LOWPOLY / row["path"])
    out.parent.mkdir(parents=True, exist_ok=True)
    trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(out)
    return out, int(mesh.faces.shape[0])


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _tree(root: Path) -> dict:
    """metadata.csv (one row per line, in this order) + toys4k_obj_files/; returns facts for the checks.

    line 2: good, three captions (the longest is the second)     line 5: mesh folder missing
    line 3: good, another category, bad aesthetic_score          line 6: captions not a list literal (code!)
    line 4: good, same category as line 2                        line 7: captions an empty list
    line 8: duplicate sha256 of line 2 (skipped)                 line 9: captions ['ok', 3]
    """
    objs = lowpoly_sample(1)[:3]  # character, container, food: one each
    rows: list[list[str]] = []
    faces: dict[str, int] = {}
    caps2 = ["a knight", "a barbarian warrior holding a big axe", "a man"]

    def add(sha: str, category: str, name: str, score: str, captions: str, obj: dict | None) -> None:
        if obj is not None:
            _, n = _obj_from_glb(obj, root / "toys4k_obj_files" / category / name / "mesh.obj")
            faces[sha] = n
        rows.append(
            [
                str(len(rows)),
                sha,
                f"{category}/{name}/{name}.blend",
                score,
                captions,
                obj["id"] if obj else "",
            ]
        )

    add(_sha("a"), "knight", "knight_001", "5.25", repr(caps2), objs[0])
    add(_sha("b"), "bucket", "bucket_007", "n/a", '["a red bucket", "bucket"]', objs[1])
    add(_sha("c"), "knight", "knight_002", "", "['a knight']", objs[2])
    add(_sha("d"), "knight", "knight_404", "4.5", "['a lost knight']", None)
    add(_sha("e"), "bucket", "bucket_009", "4.5", "__import__('os').system('touch PWNED')", objs[1])
    add(_sha("f"), "bucket", "bucket_010", "4.5", "[]", objs[1])
    add(_sha("a"), "knight", "knight_001", "1.0", "['the duplicate']", None)
    add(_sha("g"), "bucket", "bucket_011", "4.5", "['ok', 3]", objs[1])
    with (root / "metadata.csv").open("w", newline="") as f:
        csv.writer(f).writerows([HEADER, *rows])
    return {"faces": faces, "caps2": caps2, "objs": objs}


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if not LOWPOLY.is_dir():
        pytest.skip("shared data not available")
    root = tmp_path_factory.mktemp("toys4k")
    return root, _tree(root)


@needs_data
def test_cases_categories_captions_and_failed_rows(toys: tuple[Path, dict]) -> None:
    root, facts = toys
    suite = load_suite(f"toys4k:{root}")
    csv_path = root / "metadata.csv"
    assert suite.kind == "toys4k" and suite.name == f"toys4k:{root.name}" and suite.source == str(csv_path)
    # Every row kept in file order but the duplicate.
    assert [c.id for c in suite.cases] == [_sha(x) for x in "abcdefg"]
    assert [c.category for c in suite.cases] == [
        "knight",
        "bucket",
        "knight",
        "knight",
        "bucket",
        "bucket",
        "bucket",
    ]
    assert suite.categories == ["bucket", "knight"]
    a, b, c, d, e, f, g = suite.cases
    assert a.ref_mesh == str(root / "toys4k_obj_files" / "knight" / "knight_001" / "mesh.obj")
    assert a.caption == "a barbarian warrior holding a big axe"  # the longest of three, not the first
    assert a.prompt is None and a.image is None
    assert a.meta == {  # the unnamed index column is dropped; other columns are kept
        "source": facts["objs"][0]["id"],
        "sha256": _sha("a"),
        "file_identifier": "knight/knight_001/knight_001.blend",
        "aesthetic_score": 5.25,
        "captions": facts["caps2"],
        "caption_choice": "longest",
        "up": "y",
    }
    assert b.caption == "a red bucket" and b.meta["aesthetic_score"] is None
    assert c.caption == "a knight" and c.meta["aesthetic_score"] is None
    assert all("input_error" not in x.meta for x in (a, b, c))
    # Failed rows: kept, with the file, line and reason.
    assert d.meta["input_error"] == (
        f"{csv_path}:5: mesh not found: {root / 'toys4k_obj_files' / 'knight' / 'knight_404' / 'mesh.obj'}"
    )
    assert e.meta["input_error"].startswith(f"{csv_path}:6: captions \"__import__('os')")
    assert "not a list literal" in e.meta["input_error"] and e.caption is None and e.meta["captions"] == []
    assert not (root / "PWNED").exists() and not Path("PWNED").exists()  # read with literal_eval only
    assert f.meta["input_error"] == f"{csv_path}:7: captions is an empty list"
    assert (
        g.meta["input_error"].startswith(f"{csv_path}:9: captions ") and "non-string" in g.meta["input_error"]
    )
    # One problem line per bad row, "FILE:LINE: reason", in file order.
    assert suite.problems == [
        f"{csv_path}:3: aesthetic_score 'n/a' is not a number; aesthetic_score recorded as None",
        f"{d.meta['input_error']} (case {d.id!r} kept; it will fail)",
        f"{e.meta['input_error']} (case {e.id!r} kept; it will fail)",
        f"{f.meta['input_error']} (case {f.id!r} kept; it will fail)",
        f"{csv_path}:8: duplicate sha256 {_sha('a')!r} (first at line 2); row skipped",
        f"{g.meta['input_error']} (case {g.id!r} kept; it will fail)",
    ]
    # The metadata file itself names the same suite.
    assert load_suite(f"toys4k:{csv_path}").cases == suite.cases


@needs_data
def test_caption_first_vs_longest(toys: tuple[Path, dict]) -> None:
    root, facts = toys
    longest = load_suite(f"toys4k:{root}")
    first = load_suite(f"toys4k:{root}", caption="first")
    assert first.cases[0].caption == facts["caps2"][0] == "a knight"
    assert longest.cases[0].caption == max(facts["caps2"], key=len)
    assert first.cases[1].caption == "a red bucket"  # first and longest agree here
    assert first.cases[0].meta["caption_choice"] == "first"
    assert first.options["caption"] == "first"
    assert choose_caption(["ab", "cd", "a"], "longest") == "ab"  # ties: the first of equals


@needs_data
def test_categories_and_limit_options(toys: tuple[Path, dict]) -> None:
    root, _ = toys
    knights = load_suite(f"toys4k:{root}", categories="knight")
    assert [c.id for c in knights.cases] == [_sha("a"), _sha("c"), _sha("d")]
    sample = load_suite(f"toys4k:{root}", limit=2)
    assert sorted(c.category for c in sample.cases) == ["bucket", "knight"]


@needs_data
def test_reference_stage_fails_bad_rows_with_the_reason_and_loads_good_ones(
    toys: tuple[Path, dict], tmp_path: Path
) -> None:
    from gen3deval.config import PROTOCOLS
    from gen3deval.engine.stages import stage_reference

    root, facts = toys
    suite = load_suite(f"toys4k:{root}")
    params = {**PROTOCOLS["code3d"].params(), "rig": None}
    for case in suite.cases[3:]:
        res = stage_reference(dataclasses.asdict(case), params, tmp_path / case.id[:8])
        assert res.status == "failed" and res.error_class == "reference_error"
        assert res.error == case.meta["input_error"]
    good = suite.cases[0]
    (tmp_path / "good").mkdir()
    res = stage_reference(dataclasses.asdict(good), params, tmp_path / "good")
    assert res.status == "done", res.error
    assert res.value["n_faces"] == facts["faces"][good.id]  # the OBJ written from the GLB, face for face


@needs_data
def test_up_z_rotates_the_reference(toys: tuple[Path, dict]) -> None:
    from gen3deval.mesh.io import load_mesh

    root, _ = toys
    y_case = load_suite(f"toys4k:{root}").cases[0]
    z_case = load_suite(f"toys4k:{root}", up="z").cases[0]
    assert (y_case.meta["up"], z_case.meta["up"]) == ("y", "z")
    y = load_mesh(y_case.ref_mesh, up=y_case.meta["up"]).vertices
    z = load_mesh(z_case.ref_mesh, up=z_case.meta["up"]).vertices
    lo_y, hi_y = y.min(axis=0), y.max(axis=0)
    lo_z, hi_z = z.min(axis=0), z.max(axis=0)
    # +Z up file -> canonical +Y up: (x, y, z) -> (x, z, -y); the extents swap y and z.
    np.testing.assert_allclose(hi_z - lo_z, (hi_y - lo_y)[[0, 2, 1]], rtol=1e-6)
    np.testing.assert_allclose([lo_z[1], hi_z[1]], [lo_y[2], hi_y[2]], rtol=1e-6)
    np.testing.assert_allclose([lo_z[2], hi_z[2]], [-hi_y[1], -lo_y[1]], rtol=1e-6)
    assert not np.allclose(hi_z - lo_z, hi_y - lo_y)  # the test object is not symmetric in y/z


@needs_data
def test_files_system_finds_sha256_named_outputs(toys: tuple[Path, dict], tmp_path: Path) -> None:
    import trimesh

    from gen3deval.systems.base import GenerationFailed
    from gen3deval.systems.files import FilesSystem

    root, _ = toys
    cases = load_suite(f"toys4k:{root}").cases
    out = tmp_path / "outputs"
    out.mkdir()
    box = trimesh.creation.box()
    for case, ext in zip(cases[:3], ("glb", "obj", "ply"), strict=True):
        box.export(out / f"{case.id}.{ext}")
    system = FilesSystem({"dir": str(out)})
    for case, ext in zip(cases[:3], ("glb", "obj", "ply"), strict=True):
        cand = system.generate(case, None, tmp_path)
        assert cand.mesh_path == str((out / f"{case.id}.{ext}").resolve())
    with pytest.raises(GenerationFailed) as err:
        system.generate(cases[3], None, tmp_path)
    assert err.value.error_class == "missing_output" and cases[3].id in err.value.message
    assert system.preflight(cases)[0].startswith(f"3 of {len(cases)} cases have a file")


def test_metadata_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"metadata\.csv: file not found"):
        load_suite(f"toys4k:{tmp_path}")
    (tmp_path / "metadata.csv").write_text("sha256,file_identifier,aesthetic_score\nabc,x/y/z.blend,1\n")
    with pytest.raises(SuiteError, match=r"metadata\.csv:1: missing column\(s\) captions"):
        load_suite(f"toys4k:{tmp_path}")
    (tmp_path / "metadata.csv").write_text("")
    with pytest.raises(SuiteError, match=r"metadata\.csv: empty file"):
        load_suite(f"toys4k:{tmp_path}")
    (tmp_path / "metadata.csv").write_bytes(b"sha256,file_identifier,captions\n\xff\xfe,a/b/c,[]\n")
    with pytest.raises(SuiteError, match=r"metadata\.csv: not UTF-8"):
        load_suite(f"toys4k:{tmp_path}")
    (tmp_path / "metadata.csv").write_text("sha256,file_identifier,captions\n../evil,a/b/c.blend,['x']\n")
    with pytest.raises(SuiteError, match=r"metadata\.csv:2: unsafe case id '\.\./evil'"):
        load_suite(f"toys4k:{tmp_path}")


def test_rows_that_name_no_safe_mesh_folder_fail(tmp_path: Path) -> None:
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text(
        "SHA256,File_Identifier,Captions\n"
        "s1,../../etc/passwd,['x']\n"
        "s2,lonely.blend,['x']\n"
        ",a/b/c.blend,['x']\n"
        "s3,a/b/c.blend\n"
    )
    suite = load_suite(f"toys4k:{tmp_path}")  # header names are case-insensitive
    assert [c.id for c in suite.cases] == ["s1", "s2"]
    assert all(c.ref_mesh is None and c.category == "default" for c in suite.cases)
    assert (
        "file_identifier '../../etc/passwd' does not start with a safe" in suite.cases[0].meta["input_error"]
    )
    assert suite.cases[1].meta["input_error"].startswith(f"{csv_path}:3: file_identifier 'lonely.blend'")
    assert suite.problems[2:] == [
        f"{csv_path}:4: missing sha256; row skipped",
        f"{csv_path}:5: expected 3 cells, found 2; row skipped",
    ]


def test_caption_option_is_validated_naming_the_option(tmp_path: Path) -> None:
    from gen3deval.spec_entries import suite_entry

    (tmp_path / "metadata.csv").write_text("sha256,file_identifier,captions\ns1,a/b/c.blend,['x']\n")
    with pytest.raises(ConfigError, match=r"caption='shortest' is invalid; use 'longest' or 'first'"):
        load_suite(f"toys4k:{tmp_path}", caption="shortest")
    with pytest.raises(ConfigError, match=r"^suites\[0\]\.caption: caption=3 is invalid"):
        suite_entry({"spec": f"toys4k:{tmp_path}", "caption": 3}, "suites[0]", tmp_path)
    assert suite_entry({"spec": f"toys4k:{tmp_path}", "caption": "first"}, "suites[0]", tmp_path) == {
        "spec": f"toys4k:{tmp_path}",
        "caption": "first",
    }
    with pytest.raises(ConfigError, match=r"'caption' does not apply to suite kind 'meshes'"):
        load_suite(f"meshes:{tmp_path}", caption="first")
    # None: the default (longest), as when a command line leaves the option out.
    assert load_suite(f"toys4k:{tmp_path}", caption=None).cases[0].meta["caption_choice"] == "longest"


@pytest.mark.parametrize(
    ("cell", "ok"),
    [
        ("['a', 'b']", ["a", "b"]),
        ('["a chair"]', ["a chair"]),  # JSON, as the TRELLIS csv files hold
        ("('a',)", ["a"]),
        ("'a string'", None),
        ("['a', '']", None),
        ("[['a']]", None),
        ("[1, 2]", None),
        ("[", None),
        ("", None),
        ("{'a': 1}", None),
    ],
)
def test_parse_captions(cell: str, ok: list[str] | None) -> None:
    captions, error = parse_captions(cell)
    if ok is None:
        assert captions == [] and error and "captions" in error
    else:
        assert (captions, error) == (ok, None)
