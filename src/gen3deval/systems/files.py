"""``files``: outputs made elsewhere ("bring your own outputs").

Settings:

- ``dir`` (required): the outputs folder, one output per case, named after the case id:
  a mesh ``{id}.glb|gltf|obj|ply|stl|off``, a program with an executor's suffix (``{id}.py`` CadQuery,
  ``{id}.js|mjs|cjs`` Three.js: :func:`gen3deval.execute.program_suffixes`), or a model's raw answer
  ``{id}.md`` / ``{id}.txt``, whose program is pulled out by :func:`gen3deval.execute.extract_code` (the same
  rule as for generated answers). The first suffix found in this order wins (the preflight warns).
- ``up``: ``y`` (default) or ``z`` for +Z-up mesh files.
- ``language``: ``threejs`` or ``cadquery``: the language of the programs in raw answers. Unset, an answer's
  language is the one whose code it holds (both: the one with the entry point, ``createObject`` or a
  CadQuery import; then the longer).

Several attempts per case: a folder ``{id}/`` holding ``1.glb``, ``2.py``, ``3.md``, ... (same suffixes); the
case has as many attempts as the highest number, and a missing number is a failed attempt
(``missing_output``). The folder wins over a flat ``{id}.*`` file.

A missing file is a failed case with error_class ``missing_output``, not a crash; so is a file that resolves
outside ``dir`` (a symlink pointing elsewhere): outputs are only ever read inside the outputs folder. A raw
answer without code is error_class ``no_code``. The generate stage is keyed on the content hash of the file
it reads (:meth:`FilesSystem.input_fingerprint`), so a changed file is scored again on a rerun.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

from gen3deval.errors import ConfigError
from gen3deval.execute.registry import LANGUAGES, program_suffixes
from gen3deval.mesh.types import Mesh
from gen3deval.suites.base import Case
from gen3deval.systems.base import Candidate, GenerationFailed, System

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
PROGRAM_SUFFIXES = program_suffixes()  # {".py": "cadquery", ".js": "threejs", ...}: the executors' registry
ANSWER_SUFFIXES = (".md", ".txt")
SUFFIXES = (*MESH_SUFFIXES, *PROGRAM_SUFFIXES, *ANSWER_SUFFIXES)
# More attempt files than this in one case folder is a mistake (each attempt is a whole pipeline).
MAX_ATTEMPTS = 100
_ATTEMPT_RE = re.compile(r"^([1-9][0-9]*)$")
# The entry point of each language (decides an answer that holds code of both languages).
_ENTRY = {
    "threejs": re.compile(r"\bcreateObject\b"),
    "cadquery": re.compile(r"^\s*(?:import|from)\s+cadquery\b|\bcq\.\w", re.M),
}


class FilesSystem(System):
    """Candidates read from ``dir/{case id}.{ext}`` or ``dir/{case id}/{attempt}.{ext}``."""

    name: ClassVar[str] = "files"
    description: ClassVar[str] = (
        "outputs made elsewhere: dir/{case id}.glb|gltf|obj|ply|stl|off|js|py|md|txt, "
        "attempts in dir/{case id}/1.ext, 2.ext, ..."
    )
    settings_schema: ClassVar[dict[str, tuple[Any, Any]]] = {
        "dir": (str, ...),
        "up": (str, "y"),
        "language": (str, None),
    }
    path_settings: ClassVar[tuple[str, ...]] = ("dir",)

    def __init__(self, settings: dict[str, Any] | None = None, *, base_dir: str | Path = ".") -> None:
        super().__init__(settings, base_dir=base_dir)

    @classmethod
    def check_settings(cls, settings: dict[str, Any], where: str) -> None:
        if not Path(settings["dir"]).is_dir():
            raise ConfigError(f"{where}.dir: folder not found: {settings['dir']}")
        if settings["up"] not in ("y", "z"):
            raise ConfigError(f"{where}.up: expected 'y' or 'z', got {settings['up']!r}")
        if settings["language"] not in (None, *LANGUAGES):
            known = " or ".join(repr(lang) for lang in LANGUAGES)
            raise ConfigError(f"{where}.language: expected {known}, got {settings['language']!r}")

    # -- where the files are ---------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return Path(self.settings["dir"])

    def _attempt_dir(self, case: Case) -> Path | None:
        d = self.folder / case.id
        return d if _safe_name(case.id) and d.is_dir() else None

    def _attempt_numbers(self, folder: Path) -> dict[int, list[str]]:
        """attempt number -> file names of ``folder`` (``N.ext`` with a known suffix), N <= MAX_ATTEMPTS."""
        found: dict[int, list[str]] = {}
        for entry in _listdir(folder):
            stem, suffix = os.path.splitext(entry)
            m = _ATTEMPT_RE.match(stem)
            if m and suffix in SUFFIXES and int(stem) <= MAX_ATTEMPTS:
                found.setdefault(int(stem), []).append(entry)
        return found

    def _find(self, case: Case, attempt: int) -> Path | None:
        """The file of ``case``/``attempt`` (None: none there). Raises GenerationFailed for an unsafe path."""
        if not _safe_name(case.id):
            raise GenerationFailed(
                "missing_output",
                f"case id {case.id!r} is not a safe file name; not looked up in {self.folder}",
            )
        attempt_dir = self._attempt_dir(case)
        if attempt_dir is not None:
            base, stem = attempt_dir, str(attempt)
        elif attempt == 1:
            base, stem = self.folder, case.id
        else:
            return None
        for suffix in SUFFIXES:
            p = base / f"{stem}{suffix}"
            if p.is_file():
                return self._inside(p)
        return None

    def _inside(self, p: Path) -> Path:
        """``p`` resolved, refused when it (a symlink, or through one) points outside the outputs folder."""
        root = self.folder.resolve()
        real = p.resolve()
        if not real.is_relative_to(root):
            raise GenerationFailed(
                "missing_output",
                f"{p}: resolves to {real}, outside the outputs folder {root}; "
                "outputs are only read inside the folder (copy the file there instead of linking it)",
            )
        return real

    # -- planning hooks ----------------------------------------------------------------------------------
    def attempts(self, case: Case) -> int:
        """The highest attempt number in ``dir/{id}/`` (1 without such a folder, or when it is empty)."""
        attempt_dir = self._attempt_dir(case)
        if attempt_dir is None:
            return 1
        return max(self._attempt_numbers(attempt_dir), default=1)

    def input_fingerprint(self, case: Case, attempt: int) -> str:
        """``"NAME:sha256"`` of the file that :meth:`generate` reads for this attempt; ``"missing"`` when there is
        none, ``"unsafe"`` when it points outside the folder."""
        try:
            p = self._find(case, attempt)
        except GenerationFailed:
            return "unsafe"
        if p is None:
            return "missing"
        # The engine's content digest: cached per (path, size, mtime, inode), and a glTF's or OBJ's side
        # files are part of it, as they are of the mesh generate loads.
        from gen3deval.engine.artifacts import content_digest

        return f"{p.name}:{content_digest(p)}"

    def preflight(self, cases: list[Case]) -> list[str]:
        """Warnings about the outputs folder against the cases: how many cases have a file, which files match
        no case id, ignored files in attempt folders. Checks the runtime of every program language found."""
        folder = self.folder
        ids = {c.id for c in cases}
        entries = _listdir(folder)
        stems: dict[str, list[str]] = {}
        for entry in entries:
            if entry.startswith("."):
                continue
            p = folder / entry
            stem, suffix = os.path.splitext(entry)
            if p.is_dir():
                stems.setdefault(entry, []).append(entry + "/")
            elif suffix in SUFFIXES:
                stems.setdefault(stem, []).append(entry)
        warnings: list[str] = []
        unmatched = sorted(f for stem, files in stems.items() if stem not in ids for f in files)
        with_file = 0
        languages: set[str] = set()
        for case in cases:
            files = stems.get(case.id, [])
            if not files:
                continue
            with_file += 1
            if case.id + "/" in files:
                attempt_dir = folder / case.id
                numbered = self._attempt_numbers(attempt_dir)
                ignored = sorted(
                    set(_listdir(attempt_dir)) - {f for names in numbered.values() for f in names}
                )
                if ignored:
                    warnings.append(
                        f"{attempt_dir}: {len(ignored)} files are not attempts N.ext "
                        f"(N = 1..{MAX_ATTEMPTS}) and are ignored: {_shown(ignored)}"
                    )
                if len(files) > 1:
                    warnings.append(
                        f"{folder}: case {case.id!r} has both the folder {case.id}/ and "
                        f"{_shown([f for f in files if not f.endswith('/')])}; the folder's attempts are used"
                    )
                names = [attempt_dir / f for fs in numbered.values() for f in fs]
            else:
                names = [folder / f for f in files]
                if len(files) > 1:
                    used = min(files, key=lambda f: SUFFIXES.index(os.path.splitext(f)[1]))
                    warnings.append(
                        f"{folder}: case {case.id!r} has several outputs: {_shown(files)}; using {used}"
                    )
                    names = [folder / used]
            languages.update(lang for p in names if (lang := self._language_of(p)) is not None)
        if unmatched or with_file < len(cases):
            msg = f"{with_file} of {len(cases)} cases have a file in {folder}"
            if unmatched:
                msg += f"; {len(unmatched)} files match no case id ({_shown(unmatched)})"
            if with_file == 0 and cases:
                msg += f"; the case ids look like: {_shown(sorted(ids))}"
            warnings.insert(0, msg)
        self._check_runtimes(languages)
        return warnings

    def _language_of(self, p: Path) -> str | None:
        if p.suffix in PROGRAM_SUFFIXES:
            return PROGRAM_SUFFIXES[p.suffix]
        if p.suffix in ANSWER_SUFFIXES:
            if self.settings["language"]:
                return str(self.settings["language"])
            try:
                return _answer_language(p.read_text(encoding="utf-8", errors="replace"))[0]
            except OSError:
                return None
        return None

    @staticmethod
    def _check_runtimes(languages: set[str]) -> None:
        import gen3deval.execute as execute

        check = getattr(execute, "check_runtime", None)
        if check is not None:
            for language in sorted(languages):
                check(language)  # DependencyError (what is missing, the fix) stops the run before any work

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        p = self._find(case, attempt)
        if p is None:
            raise GenerationFailed("missing_output", self._missing_message(case, attempt))
        meta = {"file": str(p)}
        if p.suffix in MESH_SUFFIXES:
            return Candidate(mesh_path=str(p), up=self.settings["up"], meta=meta)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise GenerationFailed("missing_output", f"{p}: cannot read ({exc})") from None
        if p.suffix in PROGRAM_SUFFIXES:
            return Candidate(program=text, language=PROGRAM_SUFFIXES[p.suffix], meta=meta)
        forced = self.settings["language"]
        if forced:
            from gen3deval.execute import extract_code

            language, code = forced, extract_code(text, forced)
        else:
            language, code = _answer_language(text)
        if code is None or language is None:
            wanted = forced or " or ".join(LANGUAGES)
            raise GenerationFailed("no_code", f"{p}: the answer holds no {wanted} code")
        return Candidate(program=code, language=language, meta={**meta, "extracted": True})

    def _missing_message(self, case: Case, attempt: int) -> str:
        suffixes = ",".join(s.lstrip(".") for s in SUFFIXES)
        attempt_dir = self._attempt_dir(case)
        if attempt_dir is not None:
            return f"no output for case {case.id!r} attempt {attempt} in {attempt_dir} (looked for {attempt}.{{{suffixes}}})"
        return f"no output for case {case.id!r} in {self.folder} (looked for {case.id}.{{{suffixes}}})"


def _answer_language(text: str) -> tuple[str | None, str | None]:
    """(language, code) of a raw answer: the language whose code it holds; both: the one with its entry point,
    then the longer code. (None, None) without code."""
    from gen3deval.execute import extract_code

    found = {lang: code for lang in LANGUAGES if (code := extract_code(text, lang)) is not None}
    if not found:
        return None, None
    best = max(found, key=lambda lang: (bool(_ENTRY[lang].search(found[lang])), len(found[lang])))
    return best, found[best]


def _safe_name(case_id: str) -> bool:
    """Whether ``case_id`` can name a file inside the folder (the suite loaders refuse other ids already)."""
    return (
        bool(case_id)
        and case_id.isprintable()
        and "/" not in case_id
        and "\\" not in case_id
        and not case_id.startswith(".")
    )


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _shown(names: list[str], n: int = 5) -> str:
    more = f", ... {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
