"""The protocol fingerprint records each vlm system's model and prompt template version (issue 11): runs
with another prompt are not comparable, and the fingerprint says why."""

from __future__ import annotations

from pathlib import Path

from gen3deval.config import get_protocol
from gen3deval.engine.build import protocol_fingerprint
from gen3deval.prompts import load_template
from gen3deval.systems.base import create_system


def test_model_and_prompt_version_are_in_the_fingerprint(tmp_path: Path) -> None:
    proto = get_protocol("code3d")
    builtin = create_system("vlm", {"model": "m/one"})
    fp = protocol_fingerprint(proto, renderer={}, systems={"vlm": builtin, "files": object()})
    assert fp["models"]["vlm"] == {
        "model": "m/one",
        "prompt": "threejs",
        "prompt_version": load_template("threejs", tmp_path, language="threejs").version,
    }
    assert "files" not in fp["models"]
    custom = tmp_path / "mine.md"
    custom.write_text("Write a Three.js program.\n", encoding="utf-8")
    other = create_system("vlm", {"model": "m/one", "prompt": str(custom)}, base_dir=tmp_path)
    fp2 = protocol_fingerprint(proto, renderer={}, systems={"vlm": other})
    assert fp2["models"]["vlm"]["prompt_version"] != fp["models"]["vlm"]["prompt_version"]
    assert fp2["hash"] != fp["hash"]
