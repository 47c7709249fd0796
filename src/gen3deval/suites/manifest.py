"""``manifest:FILE``: a ``manifest.jsonl`` (one JSON object a line) or a ``.json`` list of objects.

Entry fields: ``id`` (str or int, required), ``path`` (reference mesh, relative to the manifest's folder or
absolute; required unless the entry has ``ref_code``), ``category`` (default ``"default"``), optional
``caption``, ``image`` (relative like ``path``), ``prompt``, ``ref_code`` + ``ref_code_lang``, ``up``
(``y``/``z``, overrides the suite option for this entry). Every other field goes to ``Case.meta``
(licence, pack, ...). A ``.json`` file may also be ``{"cases": [...]}``. Given a folder, the loader reads
``manifest.jsonl`` or ``manifest.json`` inside it.

Bad entries (invalid JSON, not an object, missing/invalid id, duplicate id, no ``path``, wrong field type)
are skipped and recorded as ``"FILE:LINE: reason"`` (``"FILE:entry N"`` for a .json list). An id that is not
a safe file name (``/``, ``..``, control characters, leading ``.``) refuses the whole file with
:class:`~gen3deval.errors.SuiteError` naming the line. An entry whose ``path`` file does not exist, or whose
``image`` is missing, empty or does not decode, is kept (the engine marks the case failed with that reason)
and also recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gen3deval.errors import SuiteError
from gen3deval.execute.registry import EXECUTORS
from gen3deval.suites.base import Case
from gen3deval.suites.suite import (
    UP_AXES,
    Suite,
    UnsafeCaseId,
    check_case_id,
    image_problem,
    mesh_up,
    require_file,
)

MANIFEST_NAMES = ("manifest.jsonl", "manifest.json")
_CASE_FIELDS = ("id", "category", "path", "caption", "image", "prompt", "ref_code", "ref_code_lang", "up")
_CODE_LANGS = tuple(EXECUTORS)  # the executor registry's languages


def find_manifest(path: Path | None) -> Path:
    """``path`` itself, or ``manifest.jsonl``/``manifest.json`` inside the folder ``path``."""
    if path is not None and path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return (path / name).resolve()
        raise SuiteError(f"{path}: folder has no {' or '.join(MANIFEST_NAMES)}")
    return require_file(path, "manifest")


def load_manifest(path: Path | None, *, up: str = "y") -> Suite:
    """Load a manifest file (or the manifest inside a folder); cases in file order."""
    file = find_manifest(path)
    name = file.parent.name if file.name in MANIFEST_NAMES else file.stem
    cases, problems = read_manifest(file, up=up)
    return Suite(name=f"manifest:{name}", kind="manifest", source=str(file), cases=cases, problems=problems)


def read_manifest(file: Path, *, up: str = "y") -> tuple[list[Case], list[str]]:
    """Parse ``file`` into (cases, problems); see the module docstring for the entry format."""
    entries: list[tuple[str, Any]] = []  # (location for messages, parsed value or an exception)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SuiteError(f"{file}: cannot read ({exc.strerror})") from None
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("cases"), list):
            data = data["cases"]
        if not isinstance(data, list):
            raise SuiteError(f"{file}: expected a JSON list of case objects (or {{'cases': [...]}})")
        entries = [(f"{file}:entry {i + 1}", item) for i, item in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"{file}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                entries.append(
                    (f"{file}:{lineno}", ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})"))
                )
    cases: list[Case] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for where, entry in entries:
        try:
            case = entry_to_case(entry, file.parent, up=up)
        except UnsafeCaseId as exc:
            raise SuiteError(f"{where}: {exc}") from None
        except ValueError as exc:
            problems.append(f"{where}: {exc}; entry skipped")
            continue
        if case.id in seen:
            problems.append(f"{where}: duplicate id {case.id!r} (first at {seen[case.id]}); entry skipped")
            continue
        seen[case.id] = where
        if case.ref_mesh is not None and not Path(case.ref_mesh).is_file():
            problems.append(
                f"{where}: path file not found: {case.ref_mesh} (case {case.id!r} kept; it will fail)"
            )
        case, problem = image_problem(case, where)
        if problem is not None:
            problems.append(problem)
        cases.append(case)
    if not cases and not problems:
        raise SuiteError(f"{file}: no entries")
    return cases, problems


def entry_to_case(entry: Any, root: Path, *, up: str = "y") -> Case:
    """One manifest entry -> Case; raises ValueError saying what is wrong with it."""
    if isinstance(entry, Exception):
        raise ValueError(str(entry))
    if not isinstance(entry, dict):
        raise ValueError(f"expected a JSON object, found {type(entry).__name__}")
    if "id" not in entry:
        raise ValueError("missing 'id'")
    case_id = check_case_id(entry["id"])
    if case_id is None:
        raise ValueError(f"invalid id {entry['id']!r} (expected a non-empty string or an integer)")
    for key in ("category", "path", "caption", "image", "prompt", "ref_code", "ref_code_lang", "up"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise ValueError(f"{key!r} must be a string, found {type(entry[key]).__name__}")
    category = (entry.get("category") or "default").strip() or "default"
    ref_code = entry.get("ref_code") or None
    ref_code_lang = entry.get("ref_code_lang") or None
    if ref_code is not None and ref_code_lang not in _CODE_LANGS:
        raise ValueError(f"ref_code_lang must be one of {list(_CODE_LANGS)}, found {ref_code_lang!r}")
    if not entry.get("path") and ref_code is None:
        raise ValueError("missing 'path' (the reference mesh)")
    entry_up = entry.get("up") or up
    if entry_up not in UP_AXES:
        raise ValueError(f"'up' must be 'y' or 'z', found {entry_up!r}")
    ref_mesh = _resolve(root, entry["path"]) if entry.get("path") else None
    meta = {k: v for k, v in entry.items() if k not in _CASE_FIELDS}
    if ref_mesh is not None:
        meta["up"] = mesh_up(ref_mesh, entry_up)
    return Case(
        id=case_id,
        category=category,
        image=_resolve(root, entry["image"]) if entry.get("image") else None,
        prompt=entry.get("prompt") or None,
        ref_mesh=ref_mesh,
        ref_code=ref_code,
        ref_code_lang=ref_code_lang if ref_code is not None else None,
        caption=entry.get("caption") or None,
        meta=meta,
    )


def _resolve(root: Path, rel: str) -> str:
    p = Path(rel).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())
