"""``files``: outputs made elsewhere ("bring your own outputs").

Setting ``dir``: a folder holding one file per case, named after the case id: a mesh
``{id}.glb|gltf|obj|ply|stl|off`` or a program ``{id}.js`` (Three.js) / ``{id}.py`` (CadQuery).
Setting ``up``: ``y`` (default) or ``z`` for +Z-up mesh files. A missing file is a failed case with
error_class ``missing_output``, not a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from gen3deval.errors import ConfigError
from gen3deval.mesh.types import Mesh
from gen3deval.suites.base import Case
from gen3deval.systems.base import Candidate, GenerationFailed, System

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
PROGRAM_SUFFIXES = {".js": "threejs", ".py": "cadquery"}


class FilesSystem(System):
    """Candidates read from ``dir/{case id}.{ext}``; the first suffix found in the order above wins."""

    name: ClassVar[str] = "files"
    description: ClassVar[str] = "outputs made elsewhere: dir/{case id}.glb|gltf|obj|ply|stl|off|js|py"
    settings_schema: ClassVar[dict[str, tuple[Any, Any]]] = {"dir": (str, ...), "up": (str, "y")}
    path_settings: ClassVar[tuple[str, ...]] = ("dir",)

    @classmethod
    def check_settings(cls, settings: dict[str, Any], where: str) -> None:
        if not Path(settings["dir"]).is_dir():
            raise ConfigError(f"{where}.dir: folder not found: {settings['dir']}")
        if settings["up"] not in ("y", "z"):
            raise ConfigError(f"{where}.up: expected 'y' or 'z', got {settings['up']!r}")

    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        folder = Path(self.settings["dir"])
        for suffix in MESH_SUFFIXES:
            p = folder / f"{case.id}{suffix}"
            if p.is_file():
                return Candidate(mesh_path=str(p), up=self.settings["up"], meta={"file": str(p)})
        for suffix, language in PROGRAM_SUFFIXES.items():
            p = folder / f"{case.id}{suffix}"
            if p.is_file():
                try:
                    text = p.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise GenerationFailed("missing_output", f"{p}: cannot read program ({exc})") from None
                return Candidate(program=text, language=language, meta={"file": str(p)})
        raise GenerationFailed(
            "missing_output",
            f"no output for case {case.id!r} in {folder} (looked for {case.id}.{{glb,gltf,obj,ply,stl,off,js,py}})",
        )
