"""Answer extraction on realistic model answers (markdown, several blocks, prose, bare code, no code)."""

from __future__ import annotations

import pytest

from gen3deval.execute.extract import extract_code

JS_MAIN = """function createObject(THREE) {
  const group = new THREE.Group();
  const seat = new THREE.Mesh(new THREE.BoxGeometry(1, 0.1, 1), new THREE.MeshStandardMaterial({ color: 0x8b4513 }));
  group.add(seat);
  return group;
}"""

PY_MAIN = """import cadquery as cq

result = cq.Workplane("XY").box(10, 20, 5).faces(">Z").hole(3)"""


def test_js_fence_with_prose_around() -> None:
    answer = f"""Sure! Here is a simple chair built from boxes.

```javascript
{JS_MAIN}
```

The seat is 1 unit wide. Let me know if you want legs!"""
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


@pytest.mark.parametrize(
    "fence", ["```js", "```javascript", "``` js", "```JavaScript", "~~~js", "````js", "```"]
)
def test_fence_spellings(fence: str) -> None:
    close = fence[0] * (len(fence) - len(fence.lstrip(fence[0])))
    answer = f"Here you go:\n{fence}\n{JS_MAIN}\n{close}\nDone."
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


@pytest.mark.parametrize("fence", ["```python", "```py", "```", "~~~python3"])
def test_python_fences(fence: str) -> None:
    close = fence[0] * 3
    answer = f"The part:\n\n{fence}\n{PY_MAIN}\n{close}\n"
    assert extract_code(answer, "cadquery") == PY_MAIN + "\n"


def test_picks_the_block_with_the_entry_point_and_ignores_other_languages() -> None:
    answer = f"""First install the dependencies:

```bash
npm install three
```

Then the object:

```js
{JS_MAIN}
```

Example output:

```json
{{"vertices": 24}}
```"""
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


def test_joins_helper_blocks_the_main_block_uses() -> None:
    helper = """function makeLeg(THREE, x, z) {
  const leg = new THREE.Mesh(new THREE.CylinderGeometry(0.05, 0.05, 1), new THREE.MeshStandardMaterial());
  leg.position.set(x, -0.5, z);
  return leg;
}"""
    main = """function createObject(THREE) {
  const g = new THREE.Group();
  for (const [x, z] of [[-0.4, -0.4], [0.4, -0.4], [-0.4, 0.4], [0.4, 0.4]]) g.add(makeLeg(THREE, x, z));
  return g;
}"""
    unrelated = "// usage\nconst obj = createObjectX(THREE);\nscene.add(obj);"
    answer = (
        f"First a helper for the legs:\n```js\n{helper}\n```\nNow the chair:\n```js\n{main}\n```\n"
        f"You can add it to a scene like this:\n```js\n{unrelated}\n```"
    )
    assert extract_code(answer, "threejs") == helper + "\n\n" + main + "\n"


def test_python_import_block_is_joined() -> None:
    answer = """Import CadQuery:
```python
import cadquery as cq
```
Then build the plate:
```python
plate = cq.Workplane("XY").box(80, 60, 10)
result = plate.faces(">Z").workplane().hole(22)
```"""
    code = extract_code(answer, "cadquery")
    assert code is not None
    assert code.startswith("import cadquery as cq\n\nplate = ")
    assert code.rstrip().endswith(".hole(22)")


def test_several_complete_versions_takes_the_longest() -> None:
    short = "function createObject(THREE) {\n  return new THREE.Mesh(new THREE.BoxGeometry());\n}"
    answer = f"A minimal version:\n```js\n{short}\n```\nAnd a more detailed one:\n```js\n{JS_MAIN}\n```"
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


def test_bare_code_answer() -> None:
    assert extract_code(JS_MAIN, "threejs") == JS_MAIN + "\n"
    assert extract_code(PY_MAIN, "cadquery") == PY_MAIN + "\n"


def test_bare_code_with_prose_before_and_after() -> None:
    answer = f"Here is the code for a chair seat:\n\n{JS_MAIN}\n\nThis creates a brown seat for the chair."
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"
    py = f"Here is the CadQuery program you asked for:\n{PY_MAIN}\nIt makes a block with a hole in the top face."
    assert extract_code(py, "cadquery") == PY_MAIN + "\n"


def test_esm_module_answer_keeps_its_imports() -> None:
    code = f"import * as THREE from 'three';\n\nexport {JS_MAIN}"
    answer = f"```js\n{code}\n```"
    assert extract_code(answer, "threejs") == code + "\n"


def test_html_page_script_is_used() -> None:
    answer = f"""```html
<!DOCTYPE html>
<html><body>
<script type="module">
{JS_MAIN}
</script>
</body></html>
```"""
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


def test_think_sections_are_dropped() -> None:
    draft = "function createObject(THREE) { return null; /* draft, much longer text to make it win by length ... */ }"
    answer = f"<think>Let me draft:\n```js\n{draft}\n```\nHmm, better:</think>\n```js\n{JS_MAIN}\n```"
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


def test_unclosed_fence_runs_to_the_end() -> None:
    answer = f"Here it is:\n```javascript\n{JS_MAIN}"
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


def test_windows_newlines() -> None:
    answer = f"```js\r\n{JS_MAIN}\r\n```\r\n".replace("\n", "\r\n").replace("\r\r\n", "\r\n")
    assert extract_code(answer, "threejs") == JS_MAIN + "\n"


def test_python_block_is_not_taken_for_threejs_and_vice_versa() -> None:
    both = f"In Python:\n```python\n{PY_MAIN}\n```\nIn JavaScript:\n```js\n{JS_MAIN}\n```"
    assert extract_code(both, "threejs") == JS_MAIN + "\n"
    assert extract_code(both, "cadquery") == PY_MAIN + "\n"
    untagged = f"```\n{PY_MAIN}\n```\n```\n{JS_MAIN}\n```"
    assert extract_code(untagged, "threejs") == JS_MAIN + "\n"
    assert extract_code(untagged, "cadquery") == PY_MAIN + "\n"


@pytest.mark.parametrize(
    "answer",
    [
        None,
        "",
        "   \n\t ",
        "I'm sorry, but I can't help with creating that object.",
        "To make a chair, combine four legs with a seat and a backrest. Use boxes for the legs.",
        "```bash\nnpm install three\n```\nThen write the code yourself.",
    ],
)
def test_no_code(answer: str | None) -> None:
    assert extract_code(answer, "threejs") is None
    assert extract_code(answer, "cadquery") is None


def test_prose_mentioning_the_entry_point_is_not_code() -> None:
    assert (
        extract_code("You should write a function called createObject that returns a mesh.", "threejs")
        is None
    )


def test_unknown_language() -> None:
    with pytest.raises(ValueError, match="unknown language"):
        extract_code("x = 1", "rust")


def test_usage_example_block_is_not_joined() -> None:
    main = """function createObject(THREE) {
  const obj = new THREE.Group();
  const scene = obj;
  obj.add(new THREE.Mesh(new THREE.BoxGeometry()));
  return obj;
}"""
    usage = "const scene = new THREE.Scene();\nconst obj = createObject(THREE);\nscene.add(obj);"
    helper_shadowed = "const obj = 42;"
    answer = f"```js\n{main}\n```\nUse it like this:\n```js\n{usage}\n```\n```js\n{helper_shadowed}\n```"
    assert extract_code(answer, "threejs") == main + "\n"


def test_gencad_ground_truths_survive_every_answer_format() -> None:
    """The 100 real GenCAD-Code programs, wrapped the ways models answer, come back byte for byte."""
    import json

    from testdata import GENCAD

    if not GENCAD.exists():
        pytest.skip(f"shared data not found at {GENCAD}")
    programs = [json.loads(line)["ground_truth"] for line in GENCAD.read_text().splitlines() if line.strip()]
    assert len(programs) == 100
    for code in programs:
        body = code.strip("\n")
        wrappings = [
            body,
            f"```python\n{body}\n```",
            f"Here is the CadQuery code:\n\n```py\n{body}\n```\n\nThe solid is stored in `solid`.",
            f"```bash\npip install cadquery\n```\n```python\n{body}\n```",
            f"Sure, here is the program:\n{body}\nThis creates the requested part.",
        ]
        for answer in wrappings:
            assert extract_code(answer, "cadquery") == body + "\n", answer[:200]
        assert extract_code(f"```python\n{body}\n```", "threejs") is None


@pytest.mark.parametrize(
    "last", ["    pass", "    break", "    continue", "raise SystemExit(1)", "assert ok"]
)
def test_bare_python_keeps_statement_lines_at_the_end(last: str) -> None:
    # A bare answer whose last line is a keyword statement kept it only when it looked like an assignment or call:
    # `while True:\n    pass` lost its `pass` and became a syntax error instead of the loop it is.
    answer = f"Here you go:\nimport cadquery as cq\nok = True\nwhile ok:\n{last}\nHope this helps."
    code = extract_code(answer, "cadquery")
    assert code is not None and code.rstrip().endswith(last.strip()) and "Hope" not in code
