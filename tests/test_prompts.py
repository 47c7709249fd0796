"""Prompt templates for code-writing VLMs: versions, exact contracts, message shapes, checked on the real
executors (Node/three, CadQuery) and the real answer extraction."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen3deval.errors import ConfigError, DependencyError, UserInputError
from gen3deval.execute import extract_code, run
from gen3deval.execute.result import Limits
from gen3deval.prompts import (
    MESSAGE_CHARS,
    TEMPLATES,
    Feedback,
    fenced,
    first_messages,
    image_part,
    load_template,
    revision_messages,
    trim_message,
)

HERE = Path(".")
RED = (200, 30, 30)
FENCE_TAGS = {"threejs": "js", "cadquery": "python"}


def _png(path: Path, color: tuple[int, int, int] = RED, size: tuple[int, int] = (16, 12)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _decode(part: dict) -> Image.Image:
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    data = base64.b64decode(url.split(",", 1)[1])
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(data))


def _blocks(text: str, tag: str) -> list[str]:
    """Bodies of the ```tag fenced blocks in ``text`` (an independent reader of the templates)."""
    return re.findall(rf"^```{tag}\n(.*?)^```$", text, re.S | re.M)


def _images(msg: dict) -> list[dict]:
    return [p for p in msg["content"] if p["type"] == "image_url"]


def _text(msg: dict) -> str:
    return "\n".join(p["text"] for p in msg["content"] if p["type"] == "text")


# --------------------------------------------------------------------------------------------------
# templates: loading, versions, errors
# --------------------------------------------------------------------------------------------------


def test_builtins_load_with_stable_distinct_versions() -> None:
    a = {n: load_template(n, HERE) for n in TEMPLATES}
    for name, t in a.items():
        assert t.name == name and t.language == TEMPLATES[name]
        assert re.fullmatch(r"[0-9a-f]{16}", t.version)
        assert load_template(name, HERE) == t  # deterministic
        # Both texts hold every section; the version covers both.
        assert all(f"<!-- {s} -->" in t.text for s in ("system", "user"))
        assert all(f"<!-- {s} -->" in t.revise_text for s in ("revise", "failed", "ran"))
    assert a["threejs"].version != a["cadquery"].version


def test_version_changes_with_either_text(tmp_path: Path) -> None:
    base = load_template("threejs", HERE)
    same = tmp_path / "same.md"
    same.write_text(base.text + base.revise_text)
    assert load_template(str(same), tmp_path, language="threejs").version == base.version
    edited_first = tmp_path / "a.md"
    edited_first.write_text(base.text.replace("expert", "skilled") + base.revise_text)
    edited_rev = tmp_path / "b.md"
    edited_rev.write_text(base.text + base.revise_text.replace("WHOLE", "entire"))
    versions = {base.version, load_template(str(edited_first), tmp_path).version}
    versions.add(load_template(str(edited_rev), tmp_path).version)
    assert len(versions) == 3


def test_file_template_defaults_user_and_revision_sections(tmp_path: Path) -> None:
    (tmp_path / "plain.md").write_text("Write Three.js. Use ${x} freely in examples.\n")
    t = load_template("plain.md", tmp_path, language="threejs")  # relative to base_dir
    assert t.name == "plain" and t.language == "threejs"
    assert t.section("system") == "Write Three.js. Use ${x} freely in examples."
    assert t.section("user") == "Reference image:\n$reference_image"
    builtin = load_template("threejs", HERE)
    assert t.revise_text == builtin.revise_text
    img = _png(tmp_path / "ref.png")
    msgs = first_messages(t, img)
    assert msgs[0] == {"role": "system", "content": "Write Three.js. Use ${x} freely in examples."}
    assert [p["type"] for p in msgs[1]["content"]] == ["text", "image_url"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("<!-- system -->\nx\n<!-- nonsense -->\ny\n", "unknown section <!-- nonsense -->"),
        ("<!-- system -->\nx\n<!-- system -->\ny\n", "appears twice"),
        ("hello\n<!-- system -->\nx\n", "text before the first section marker"),
        ("<!-- user -->\n$reference_image\n", "<!-- system --> section is missing"),
        (
            "<!-- system -->\nx\n<!-- user -->\nLook: $reference_image\n",
            "needs $reference_image alone on a line",
        ),
        ("<!-- system -->\nx\n<!-- user -->\n$reference_image\n$program\n", "uses $program"),
        ("<!-- system -->\nx\n<!-- failed -->\nit failed\n", "<!-- failed --> needs $message"),
        ("<!-- system -->\nx\n<!-- ran -->\nit ran\n", "needs $render_image alone on a line"),
        ("<!-- system -->\nx\n<!-- revise -->\n$reference_image\n$feedback\nagain\n", "needs $program"),
    ],
)
def test_malformed_template_files_name_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.md"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_template(str(path), tmp_path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_unknown_prompt_and_language_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither a built-in template \(threejs, cadquery\).*nope\.md"):
        load_template("nope.md", tmp_path)
    with pytest.raises(ConfigError, match="built-in template for cadquery, but language is 'threejs'"):
        load_template("cadquery", HERE, language="threejs")
    (tmp_path / "bin.md").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_template("bin.md", tmp_path)


# --------------------------------------------------------------------------------------------------
# the contracts, exactly as the executors implement them
# --------------------------------------------------------------------------------------------------


def test_threejs_template_quotes_the_executor_contract_verbatim() -> None:
    threejs = pytest.importorskip("gen3deval.execute.threejs")
    system = load_template("threejs", HERE).section("system")
    assert threejs.CONTRACT.strip() in system
    for fact in ("+Y is up", "front faces +Z", "ONE complete program in ONE fenced code block"):
        assert fact in system


def test_cadquery_template_states_the_result_variable_order() -> None:
    child = pytest.importorskip("gen3deval.execute._cq_child")
    system = load_template("cadquery", HERE).section("system")
    assert ", ".join(child.RESULT_NAMES) in system  # the executor's own list, in its order
    for fact in (
        "+Z is up",
        "Only solids count",
        "show_object",
        "ONE complete program in ONE fenced code block",
    ):
        assert fact in system


def _threejs_or_skip() -> None:
    from gen3deval.execute import check_runtime

    try:
        check_runtime("threejs")
    except DependencyError as exc:
        pytest.skip(str(exc))


def test_threejs_example_program_runs() -> None:
    _threejs_or_skip()
    (program,) = _blocks(load_template("threejs", HERE).section("system"), "js")
    r = run(program, "threejs", Limits(wall_s=10, cpu_s=10, memory_mb=2048))
    assert r.executable, (r.error_class, r.message)
    # BoxGeometry(1, 1, 1) lifted by 0.5: x, z in [-0.5, 0.5], y in [0, 1]; 12 triangles.
    np.testing.assert_allclose(r.mesh.bounds, [[-0.5, 0, -0.5], [0.5, 1, 0.5]], atol=1e-6)
    assert len(r.mesh.faces) == 12


def test_cadquery_contract_facts_hold() -> None:
    pytest.importorskip("cadquery")
    (contract,) = _blocks(load_template("cadquery", HERE).section("system"), "text")
    example = "\n".join(ln[4:] for ln in contract.split("\n") if ln.startswith("    ")) + "\n"
    assert example.startswith("import cadquery as cq\n")
    lim = Limits(wall_s=30, cpu_s=30)
    r = run(example, "cadquery", lim)
    assert r.executable, (r.error_class, r.message)
    # box(10, 20, 5) is 5 tall along CadQuery's +Z, which the executor maps to +Y: extents (10, 5, 20).
    ext = np.asarray(r.mesh.bounds[1]) - np.asarray(r.mesh.bounds[0])
    np.testing.assert_allclose(ext, [10, 5, 20], atol=1e-6)
    # "solid" before "result": the template's advice not to reuse the other names is needed.
    both = (
        "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\nresult = cq.Workplane().box(2, 2, 2)\n"
    )
    r2 = run(both, "cadquery", lim)
    assert r2.sandbox["result"]["result_name"] == "solid"
    assert r2.sandbox["result"]["volume"] == pytest.approx(1.0)
    # A face alone is no part.
    face = "import cadquery as cq\nresult = cq.Workplane().rect(1, 1)\n"
    assert run(face, "cadquery", lim).error_class in {"no_geometry", "invalid_geometry"}


# --------------------------------------------------------------------------------------------------
# answers in the asked-for form go through extraction
# --------------------------------------------------------------------------------------------------

JS_PROGRAM = (
    "function createObject(THREE) {\n"
    "  const label = `size ${2}`;  // a template literal with ``` inside: ```\n"
    "  return new THREE.Mesh(new THREE.BoxGeometry(1, 2, 3), new THREE.MeshStandardMaterial());\n"
    "}\n"
)
PY_PROGRAM = "import cadquery as cq\n\nresult = cq.Workplane('XY').box(10, 20, 5).faces('>Z').hole(3)\n"


@pytest.mark.parametrize(
    ("lang", "program", "tag"), [("threejs", JS_PROGRAM, "js"), ("cadquery", PY_PROGRAM, "python")]
)
def test_typical_answers_extract(lang: str, program: str, tag: str) -> None:
    answer = f"Here is the object, built from simple primitives.\n\n{fenced(program, tag)}\n\nIt matches the image."
    assert extract_code(answer, lang) == program


def test_previous_program_is_fenced_verbatim_and_recoverable(tmp_path: Path) -> None:
    img = _png(tmp_path / "ref.png")
    t = load_template("threejs", HERE)
    msgs = revision_messages(t, img, JS_PROGRAM, Feedback(False, "syntax", "SyntaxError: x"))
    text = _text(msgs[1])
    assert JS_PROGRAM in text
    # The fence outlasts the ``` inside the program, so extraction gets the program back whole.
    assert "````js\n" in text
    assert extract_code(text, "threejs") == JS_PROGRAM


def test_placeholder_text_inside_a_program_is_not_expanded(tmp_path: Path) -> None:
    img = _png(tmp_path / "ref.png")
    program = "# $reference_image\n$feedback\nimport cadquery as cq\nresult = cq.Workplane().box(1, 1, 1)\n"
    msgs = revision_messages(
        load_template("cadquery", HERE), img, program, Feedback(False, "runtime", "$message")
    )
    assert len(_images(msgs[1])) == 1
    text = _text(msgs[1])
    assert program in text and "```text\n$message\n```" in text


# --------------------------------------------------------------------------------------------------
# messages and images
# --------------------------------------------------------------------------------------------------


def test_first_messages_shape_and_inline_png(tmp_path: Path) -> None:
    img = _png(tmp_path / "ref.png")
    for name in TEMPLATES:
        t = load_template(name, HERE)
        system, user = first_messages(t, img)
        assert system == {"role": "system", "content": t.section("system")}
        assert user["role"] == "user"
        (part,) = _images(user)
        assert base64.b64decode(part["image_url"]["url"].split(",", 1)[1]) == img.read_bytes()
        assert f"(```{ {'threejs': 'js', 'cadquery': 'python'}[name] } ... ```)" in _text(user)


def test_non_png_images_are_converted(tmp_path: Path) -> None:
    jpg = tmp_path / "photo.jpg"
    Image.new("RGB", (20, 10), (10, 200, 40)).save(jpg, quality=95)
    im = _decode(image_part(jpg))
    assert im.size == (20, 10)
    assert np.abs(np.asarray(im.convert("RGB"), dtype=int) - [10, 200, 40]).max() <= 6
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(cmyk)
    assert _decode(image_part(cmyk)).mode in ("RGB", "RGBA")


def test_unreadable_images_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"missing\.png: cannot read the image"):
        image_part(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(UserInputError, match=r"bad\.png"):
        first_messages(load_template("threejs", HERE), bad)


def test_revision_after_a_failure(tmp_path: Path) -> None:
    img = _png(tmp_path / "ref.png")
    long = "Traceback head\n" + "x" * 5000 + "\nValueError: the real cause (program line 7)"
    system, user = revision_messages(
        load_template("cadquery", HERE), img, PY_PROGRAM, Feedback(False, "runtime", long)
    )
    assert system["role"] == "system"
    (ref,) = _images(user)
    assert _decode(ref).getpixel((0, 0)) == RED
    text = _text(user)
    assert "`runtime`" in text and "```python\n" + PY_PROGRAM in text
    assert "Traceback head" in text and "ValueError: the real cause (program line 7)" in text
    assert "characters cut" in text and len(text) < len(PY_PROGRAM) + MESSAGE_CHARS + 800
    assert "WHOLE program" in text
    # The order: reference, program, feedback, request.
    assert text.index("previous program") < text.index("`runtime`") < text.index("WHOLE program")


def test_revision_after_a_run_shows_render_beside_reference(tmp_path: Path) -> None:
    ref = _png(tmp_path / "ref.png", RED)
    render = _png(tmp_path / "render.png", (0, 0, 255))
    _, user = revision_messages(
        load_template("threejs", HERE), ref, JS_PROGRAM, Feedback(True, render_png=render)
    )
    imgs = _images(user)
    assert [_decode(p).getpixel((0, 0)) for p in imgs] == [RED, (0, 0, 255)]
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    assert "same camera" in user["content"][2]["text"]
    # Ran but no render: said so, only the reference image.
    _, user2 = revision_messages(load_template("threejs", HERE), ref, JS_PROGRAM, Feedback(True))
    assert len(_images(user2)) == 1 and "render is not available" in _text(user2)


def test_trim_message() -> None:
    assert trim_message("  short  ") == "short"
    msg = "A" * 1000 + "B" * 3000 + "C" * 1000
    out = trim_message(msg)
    assert out.startswith("A" * 1000) and out.endswith("C" * (MESSAGE_CHARS // 3))
    assert f"[... {len(msg) - MESSAGE_CHARS * 2 // 3 - MESSAGE_CHARS // 3} characters cut ...]" in out
    assert len(out) < MESSAGE_CHARS + 50
    assert Feedback(False, "runtime", msg).message == out
