"""``toys4k:DIR``: the Toys4k evaluation set in the layout of the TRELLIS toolkit (text-to-3D, CLIP score).

Layout::

    DIR/metadata.csv                                   one asset a row (DIR may also name this file)
    DIR/toys4k_obj_files/<category>/<name>/mesh.obj    the reference mesh of each row

``metadata.csv`` columns: ``sha256`` (the case id), ``file_identifier`` (e.g.
``hammer/hammer_075/hammer_075.blend``: its first two parts are ``<category>/<name>``), ``captions`` (a Python
or JSON list literal of strings) and optionally ``aesthetic_score``; every other named column goes to
``Case.meta`` as text. Header names are matched case-insensitively.

Options: ``caption`` (``"longest"``, the default: the longest caption in characters, the first of equals;
``"first"``: the first one) and ``up`` (``"y"``/``"z"``: the up axis of the OBJ files).

Rows never stop the load. A row whose mesh is missing, whose ``file_identifier`` names no safe
``<category>/<name>``, or whose ``captions`` cell is not a non-empty list of non-empty strings is kept as a case
with ``meta["input_error"]`` (its reference stage fails with that reason) and recorded in ``Suite.problems`` as
``"FILE:LINE: reason"``. Rows without a sha256, with the wrong number of cells, or repeating a sha256 are skipped
with a problem line. A missing ``metadata.csv``, a missing required column, or a sha256 that is not a safe file
name raises :class:`~gen3deval.errors.SuiteError` naming the file.
"""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path, PurePosixPath
from typing import Any

from gen3deval.errors import SuiteError
from gen3deval.suites.base import Case
from gen3deval.suites.suite import (
    OPTION_CHOICES,
    Suite,
    SuiteOptionError,
    UnsafeCaseId,
    check_case_id,
    mesh_up,
    unsafe_id_reason,
)

METADATA_FILE = "metadata.csv"
OBJ_FOLDER = "toys4k_obj_files"
MESH_NAME = "mesh.obj"
REQUIRED_COLUMNS = ("sha256", "file_identifier", "captions")
CAPTION_CHOICES = OPTION_CHOICES["caption"]  # ("longest", "first")


def load_toys4k(path: Path | None, *, caption: str = "longest", up: str = "y") -> Suite:
    """Load a Toys4k folder (or its ``metadata.csv``); cases in file order.

    Args:
        path: the folder holding ``metadata.csv`` and ``toys4k_obj_files/``, or the CSV itself.
        caption: ``"longest"`` or ``"first"``: which of a row's captions becomes ``Case.caption``.
        up: up axis of the OBJ files (``meta["up"]`` of each case).
    """
    if caption not in CAPTION_CHOICES:
        raise SuiteOptionError("caption", f"caption={caption!r} is invalid; use 'longest' or 'first'")
    file = _find_metadata(path)
    cases, problems = read_metadata(file, caption=caption, up=up)
    return Suite(
        name=f"toys4k:{file.parent.name}", kind="toys4k", source=str(file), cases=cases, problems=problems
    )


def _find_metadata(path: Path | None) -> Path:
    if path is None:
        raise SuiteError("suite kind 'toys4k' needs a folder: toys4k:DIR (holding metadata.csv)")
    if path.is_dir():
        path = path / METADATA_FILE
    if not path.is_file():
        raise SuiteError(f"{path}: file not found (a toys4k folder holds {METADATA_FILE} and {OBJ_FOLDER}/)")
    return path.resolve()


def read_metadata(file: Path, *, caption: str = "longest", up: str = "y") -> tuple[list[Case], list[str]]:
    """Parse ``metadata.csv`` into (cases, problems); see the module docstring for the rules."""
    mesh_root = file.parent / OBJ_FOLDER
    cases: list[Case] = []
    problems: list[str] = []
    seen: dict[str, int] = {}  # sha256 -> line of its first row
    try:
        with file.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise SuiteError(
                    f"{file}: empty file; expected a header with columns {', '.join(REQUIRED_COLUMNS)}"
                )
            cols = [h.strip().lower() for h in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in cols]
            if missing:
                raise SuiteError(
                    f"{file}:1: missing column(s) {', '.join(missing)}; found {header} "
                    f"(expected {', '.join(REQUIRED_COLUMNS)}, optional aesthetic_score)"
                )
            index = {name: cols.index(name) for name in dict.fromkeys(cols) if name}
            end = reader.line_num
            for row in reader:
                # A quoted cell may span lines: a row starts on the line after the previous row ended.
                line, end = end + 1, reader.line_num
                where = f"{file}:{line}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(cols):
                    problems.append(f"{where}: expected {len(cols)} cells, found {len(row)}; row skipped")
                    continue
                cells = {name: row[i] for name, i in index.items()}
                try:
                    case_id = check_case_id(cells["sha256"].strip())
                except UnsafeCaseId as exc:
                    raise SuiteError(f"{where}: {exc}") from None
                if case_id is None:
                    problems.append(f"{where}: missing sha256; row skipped")
                    continue
                if case_id in seen:
                    problems.append(
                        f"{where}: duplicate sha256 {case_id!r} (first at line {seen[case_id]}); row skipped"
                    )
                    continue
                seen[case_id] = line
                case, row_problems = _row_to_case(case_id, cells, where, mesh_root, caption=caption, up=up)
                problems.extend(f"{where}: {p}" for p in row_problems)
                cases.append(case)
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise SuiteError(f"{file}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise SuiteError(f"{file}: cannot read ({exc.strerror})") from None
    return cases, problems


def _row_to_case(
    case_id: str, cells: dict[str, str], where: str, mesh_root: Path, *, caption: str, up: str
) -> tuple[Case, list[str]]:
    """One row -> (case, problems without the location); its input errors, joined, go to ``meta["input_error"]``."""
    errors: list[str] = []
    notes: list[str] = []
    identifier = cells["file_identifier"].strip()
    parts = PurePosixPath(identifier.replace("\\", "/")).parts
    category, ref_mesh = "default", None
    # The first two parts name folders under toys4k_obj_files/: refuse '..', absolute paths and the like.
    if len(parts) >= 2 and all(unsafe_id_reason(p) is None for p in parts[:2]):
        category = parts[0]
        mesh = mesh_root / parts[0] / parts[1] / MESH_NAME
        ref_mesh = str(mesh)
        if not mesh.is_file():
            errors.append(f"mesh not found: {mesh}")
    else:
        errors.append(
            f"file_identifier {identifier!r} does not start with a safe <category>/<name>/ "
            f"(e.g. 'hammer/hammer_075/hammer_075.blend')"
        )
    captions, caption_error = parse_captions(cells["captions"])
    if caption_error is not None:
        errors.append(caption_error)
    chosen = choose_caption(captions, caption) if captions else None
    score, score_error = _parse_score(cells.get("aesthetic_score", ""))
    if score_error is not None:
        notes.append(f"{score_error}; aesthetic_score recorded as None")
    meta: dict[str, Any] = {k: v for k, v in cells.items() if k not in (*REQUIRED_COLUMNS, "aesthetic_score")}
    meta.update(
        sha256=case_id,
        file_identifier=identifier,
        aesthetic_score=score,
        captions=captions,
        caption_choice=caption,
    )
    if ref_mesh is not None:
        meta["up"] = mesh_up(ref_mesh, up)
    if errors:
        # Kept, so that the results show every row of the metadata; the reference stage fails with this.
        meta["input_error"] = f"{where}: {'; '.join(errors)}"
        notes = [f"{e} (case {case_id!r} kept; it will fail)" for e in errors] + notes
    case = Case(id=case_id, category=category, ref_mesh=ref_mesh, caption=chosen, meta=meta)
    return case, notes


def parse_captions(cell: str) -> tuple[list[str], str | None]:
    """The captions of a ``captions`` cell and None, or ([], the reason it is unusable).

    The cell is a Python (or JSON) list literal of non-empty strings, read with :func:`ast.literal_eval`
    only (never ``eval``).
    """
    text = cell.strip()
    shown = text if len(text) <= 80 else text[:77] + "..."
    if not text:
        return [], "captions is empty; expected a list literal of strings"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [], f"captions {shown!r} is not a list literal of strings"
    if not isinstance(value, list | tuple):
        return [], f"captions {shown!r} is a {type(value).__name__}, not a list of strings"
    if not value:
        return [], "captions is an empty list"
    if not all(isinstance(v, str) and v.strip() for v in value):
        return [], f"captions {shown!r} holds an empty string or a non-string item"
    return list(value), None


def choose_caption(captions: list[str], choice: str) -> str:
    """``"first"``: ``captions[0]``; ``"longest"``: the longest in characters (the first of equals)."""
    if choice == "first":
        return captions[0]
    return max(captions, key=len)  # max keeps the first of equal keys


def _parse_score(cell: str) -> tuple[float | None, str | None]:
    text = cell.strip()
    if not text or text.lower() in ("nan", "none", "null"):
        return None, None
    try:
        value = float(text)
    except ValueError:
        return None, f"aesthetic_score {text!r} is not a number"
    return (value, None) if math.isfinite(value) else (None, f"aesthetic_score {text!r} is not finite")
