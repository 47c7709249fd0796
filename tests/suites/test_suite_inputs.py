"""Suite inputs (issue 8): images verified at load, safe case ids, stratified ``limit`` samples."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from gen3deval.errors import SuiteError
from gen3deval.suites import Case, load_suite
from gen3deval.suites.suite import check_image, stratified_sample
from testdata import LOWPOLY

needs_data = pytest.mark.skipif(not LOWPOLY.is_dir(), reason="shared data not available")


def _png_bytes(size: int = 64) -> bytes:
    rgb = (np.arange(size * size * 3) % 251).astype(np.uint8).reshape(size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _bad_images(folder: Path) -> dict[str, str]:
    """Writes one good and four bad images into ``folder``; returns {id: expected reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _png_bytes()
    (folder / "good.png").write_bytes(good)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("this is not a photo\n")
    jpeg = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(jpeg, format="JPEG")
    (folder / "cut.jpeg").write_bytes(jpeg.getvalue()[:200])
    return {
        "empty": "empty file",
        "truncated": "corrupt or truncated image",
        "text": "not an image",
        "cut": "corrupt or truncated image",
    }


# --- images are verified when the suite loads -------------------------------------------------------------


def test_images_suite_marks_broken_images(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    bad = _bad_images(folder)
    suite = load_suite(f"images:{folder}")
    by_id = {c.id: c for c in suite.cases}
    assert set(by_id) == {"good", *bad}  # every case is kept: it fails, it is not dropped
    assert "input_error" not in by_id["good"].meta
    for case_id, reason in bad.items():
        error = by_id[case_id].meta["input_error"]
        assert error.startswith(f"input image {by_id[case_id].image}: {reason}"), error
    assert len(suite.problems) == len(bad)
    for p in suite.problems:
        assert "kept; it will fail" in p and str(folder) in p


def test_check_image_accepts_real_photos_and_rejects_bad_bytes(tmp_path: Path) -> None:
    from testdata import SHARED_DATA

    photos = sorted((SHARED_DATA / "byo_images").glob("*.jp*g"))
    for photo in photos:
        assert check_image(photo) is None, photo
    assert check_image(tmp_path / "nope.png") == "file not found"
    assert check_image(tmp_path) == "not a file"


def test_manifest_and_gencad_images_are_verified(tmp_path: Path) -> None:
    _bad_images(tmp_path / "img")
    trimesh.creation.box().export(tmp_path / "box.obj")
    lines = [
        {"id": "a", "path": "box.obj", "image": "img/good.png"},
        {"id": "b", "path": "box.obj", "image": "img/truncated.png"},
        {"id": "c", "path": "box.obj"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    suite = load_suite(f"manifest:{manifest}")
    assert [("input_error" in c.meta) for c in suite.cases] == [False, True, False]
    assert suite.problems == [
        f"{manifest}:2: input image {tmp_path / 'img' / 'truncated.png'}: "
        + suite.cases[1].meta["input_error"].split(": ", 1)[1]
        + " (case 'b' kept; it will fail)"
    ]
    code = "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n"
    gencad = tmp_path / "cases.jsonl"
    gencad.write_text(
        json.dumps({"question_id": 1, "ground_truth": code, "image": "good.png"})
        + "\n"
        + json.dumps({"question_id": 2, "ground_truth": code, "image": "empty.png"})
        + "\n"
    )
    (tmp_path / "images").mkdir()  # gencad looks for images next to the jsonl and in images/
    for name in ("good.png", "empty.png"):
        (tmp_path / "images" / name).write_bytes((tmp_path / "img" / name).read_bytes())
    g = load_suite(f"gencad:{gencad}")
    assert "input_error" not in g.cases[0].meta
    assert g.cases[1].meta["input_error"].endswith("empty.png: empty file")
    assert g.problems[0].startswith(f"{gencad}:2: input image ")


def test_a_broken_input_image_fails_the_reference_stage_with_the_file_named(tmp_path: Path) -> None:
    from gen3deval.config import PROTOCOLS
    from gen3deval.engine.stages import stage_reference

    _bad_images(tmp_path / "photos")
    suite = load_suite(f"images:{tmp_path / 'photos'}")
    broken = next(c for c in suite.cases if c.id == "truncated")
    params = PROTOCOLS["code3d"].params()
    res = stage_reference(dataclasses.asdict(broken), params, tmp_path / "work")
    assert res.status != "ok" and res.error_class == "reference_error"
    assert str(tmp_path / "photos" / "truncated.png") in (res.error or "")


# --- case ids are safe file names -------------------------------------------------------------------------

UNSAFE = ["../evil", "a/b", "/etc/passwd", "a\\b", "tab\there", "nul\x00", ".hidden", "x" * 201]


@pytest.mark.parametrize("bad", UNSAFE)
def test_unsafe_ids_refuse_a_manifest_naming_the_line(tmp_path: Path, bad: str) -> None:
    trimesh.creation.box().export(tmp_path / "box.obj")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"id": "ok", "path": "box.obj"})
        + "\n\n"
        + json.dumps({"id": bad, "path": "box.obj"})
        + "\n"
    )
    with pytest.raises(SuiteError) as err:
        load_suite(f"manifest:{manifest}")
    assert str(err.value).startswith(f"{manifest}:3: unsafe case id {bad!r}")


@pytest.mark.parametrize("bad", ["../x", "q/1", "\x1b[31m"])
def test_unsafe_ids_refuse_a_gencad_file(tmp_path: Path, bad: str) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"question_id": bad, "ground_truth": "solid = 1"}) + "\n")
    with pytest.raises(SuiteError, match=rf"^{f}:1: unsafe case id"):
        load_suite(f"gencad:{f}")


def test_unsafe_file_names_refuse_folder_suites(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bell\x07.png").write_bytes(_png_bytes())
    with pytest.raises(SuiteError, match=r"unsafe case id 'bell\\x07'.*rename the file"):
        load_suite(f"images:{tmp_path / 'imgs'}")
    (tmp_path / "meshes").mkdir()
    trimesh.creation.box().export(tmp_path / "meshes" / "box\x01.obj")
    with pytest.raises(SuiteError, match=r"unsafe case id 'box\\x01'"):
        load_suite(f"meshes:{tmp_path / 'meshes'}")


def test_ordinary_ids_are_accepted(tmp_path: Path) -> None:
    trimesh.creation.box().export(tmp_path / "box.obj")
    ids = ["chair 2", "a..b", "1", "Ünïcode-ok", "x" * 200, "v1.2_final+b"]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"id": i, "path": "box.obj"}) for i in ids) + "\n")
    assert [c.id for c in load_suite(f"manifest:{tmp_path / 'm.jsonl'}").cases] == ids


# --- limit: a seeded sample stratified across categories --------------------------------------------------


def _cases(sizes: dict[str, int]) -> list[Case]:
    out = []
    for cat, n in sizes.items():
        out += [Case(id=f"{cat}{i}", category=cat) for i in range(n)]
    return out


@pytest.mark.parametrize(
    ("sizes", "n", "expected"),
    [
        # quotas 5, 2.5, 0.5; one each first, then the largest remaining quota: 5, 2, 1
        ({"a": 10, "b": 5, "c": 1}, 8, {"a": 5, "b": 2, "c": 1}),
        ({"a": 10, "b": 10, "c": 10, "d": 10}, 8, {"a": 2, "b": 2, "c": 2, "d": 2}),
        ({"a": 30, "b": 10}, 4, {"a": 3, "b": 1}),
        ({"a": 1, "b": 1, "c": 98}, 3, {"a": 1, "b": 1, "c": 1}),
        ({"a": 3, "b": 2}, 5, {"a": 3, "b": 2}),
    ],
)
def test_stratified_sample_allocation(sizes: dict[str, int], n: int, expected: dict[str, int]) -> None:
    cases = _cases(sizes)
    sample = stratified_sample(cases, n, seed=0)
    assert Counter(c.category for c in sample) == expected
    order = {c.id: i for i, c in enumerate(cases)}
    assert [order[c.id] for c in sample] == sorted(order[c.id] for c in sample)  # suite order kept


def test_stratified_sample_fewer_than_categories_and_determinism() -> None:
    cases = _cases({"a": 4, "b": 4, "c": 4, "d": 4, "e": 4})
    for seed in range(5):
        sample = stratified_sample(cases, 3, seed)
        assert len(sample) == 3 and len({c.category for c in sample}) == 3
        assert stratified_sample(cases, 3, seed) == sample
    picks = {tuple(c.id for c in stratified_sample(cases, 10, s)) for s in range(10)}
    assert len(picks) > 5  # the seed matters


@needs_data
def test_limit_on_lowpoly304_is_stratified_and_seeded() -> None:
    spec = f"manifest:{LOWPOLY}"
    full = load_suite(spec).cases
    suite = load_suite(spec, limit=16, seed=3)
    assert Counter(c.category for c in suite.cases) == {cat: 2 for cat in {c.category for c in full}}
    # The documented rule, re-derived: per category, the ids with the smallest sha256("seed:case:id").
    expected = set()
    for cat in {c.category for c in full}:
        ids = [c.id for c in full if c.category == cat]
        expected |= set(sorted(ids, key=lambda i: hashlib.sha256(f"3:case:{i}".encode()).hexdigest())[:2])
    assert {c.id for c in suite.cases} == expected
    assert [c.id for c in suite.cases] == [c.id for c in full if c.id in expected]
    assert [c.id for c in load_suite(spec, limit=16, seed=3).cases] == [c.id for c in suite.cases]
    assert {c.id for c in load_suite(spec, limit=16, seed=4).cases} != expected
    five = load_suite(spec, limit=5)
    assert len({c.category for c in five.cases}) == 5  # not the first five lines (all 'character')
    assert suite.options["seed"] == 3 and suite.options["limit"] == 16
