"""``gencad:FILE``: GenCAD-Code style jsonl (image/text -> CadQuery).

One JSON object a line: ``question_id`` (int or str, the case id), ``text`` (the instruction -> ``prompt``),
``ground_truth`` (a CadQuery program ending with ``solid=...`` -> ``ref_code``, ``ref_code_lang="cadquery"``),
``image`` (a file name), optional ``category`` (default ``"default"``). The image is used when the file exists
next to the jsonl (or in an ``images/`` folder beside it); otherwise ``image`` is None and the engine renders
the reference image from the ground-truth program. An image that is found but empty or does not decode keeps
its case, marked to fail naming the file. Bad lines are skipped and recorded as ``"FILE:LINE: reason"``; an
id that is not a safe file name (``/``, ``..``, control characters) refuses the file naming the line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gen3deval.errors import SuiteError
from gen3deval.suites.base import Case
from gen3deval.suites.suite import Suite, UnsafeCaseId, check_case_id, image_problem, require_file


def load_gencad(path: Path | None) -> Suite:
    """Load a GenCAD-Code jsonl file; cases in file order."""
    file = require_file(path, "gencad")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    cases: list[Case] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); line skipped")
            continue
        try:
            case = _entry_to_case(entry, file.parent)
        except UnsafeCaseId as exc:
            raise SuiteError(f"{where}: {exc}") from None
        except ValueError as exc:
            problems.append(f"{where}: {exc}; line skipped")
            continue
        if case.id in seen:
            problems.append(
                f"{where}: duplicate question_id {case.id!r} (first at line {seen[case.id]}); line skipped"
            )
            continue
        seen[case.id] = lineno
        case, problem = image_problem(case, where)
        if problem is not None:
            problems.append(problem)
        cases.append(case)
    return Suite(
        name=f"gencad:{file.parent.name}/{file.name}",
        kind="gencad",
        source=str(file),
        cases=cases,
        problems=problems,
    )


def _entry_to_case(entry: Any, root: Path) -> Case:
    if not isinstance(entry, dict):
        raise ValueError(f"expected a JSON object, found {type(entry).__name__}")
    if "question_id" not in entry:
        raise ValueError("missing 'question_id'")
    case_id = check_case_id(entry["question_id"])
    if case_id is None:
        raise ValueError(f"invalid question_id {entry['question_id']!r}")
    code = entry.get("ground_truth")
    if not isinstance(code, str) or not code.strip():
        raise ValueError("missing or empty 'ground_truth' (the reference CadQuery program)")
    for key in ("text", "image", "category"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise ValueError(f"{key!r} must be a string, found {type(entry[key]).__name__}")
    image = None
    if entry.get("image"):
        for candidate in (root / entry["image"], root / "images" / entry["image"]):
            if candidate.is_file():
                image = str(candidate.resolve())
                break
    meta = {k: v for k, v in entry.items() if k not in ("question_id", "text", "ground_truth", "category")}
    return Case(
        id=case_id,
        category=(entry.get("category") or "default").strip() or "default",
        image=image,
        prompt=entry.get("text") or None,
        ref_code=code,
        ref_code_lang="cadquery",
        meta=meta,
    )
