"""``meshes:DIR``: a folder of reference meshes, optionally with captions (Toys4k-style layout).

Layouts (suffixes ``.glb .gltf .obj .ply .stl .off``, case-insensitive; hidden files and folders skipped)::

    DIR/chair.glb                      id "chair", category "default"
    DIR/furniture/chair.glb            id "chair", category "furniture"  (category = first subfolder)
    DIR/furniture/chair_001/mesh.obj   id "chair_001" (the object folder, when it holds one mesh), "furniture"

``captions.csv`` in DIR (or the ``captions=`` option) has the columns ``id`` and ``caption`` and optionally
``category`` (which overrides the subfolder). Bad rows are recorded in ``Suite.problems`` with their line.
Two meshes with the same id raise :class:`~gen3deval.errors.SuiteError` naming both files, as does an id that
is not a safe file name (control characters, padded with spaces, ...).
"""

from __future__ import annotations

import csv
from pathlib import Path

from gen3deval.errors import SuiteError
from gen3deval.suites.base import Case
from gen3deval.suites.suite import MESH_SUFFIXES, Suite, UnsafeCaseId, check_case_id, mesh_up, require_dir

CAPTIONS_FILE = "captions.csv"


def load_meshes(path: Path | None, *, captions: str | Path | None = None, up: str = "y") -> Suite:
    """Load the meshes under ``path`` as reference cases (sorted by relative path).

    Args:
        path: the folder.
        captions: a captions CSV; default ``DIR/captions.csv`` when it exists.
        up: up axis of OBJ/PLY/STL/OFF files (``meta["up"]`` of each case).
    """
    folder = require_dir(path, "meshes")
    found: dict[str, tuple[str, Path]] = {}  # id -> (category, file)
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not files:
        raise SuiteError(
            f"{folder}: no mesh files found (expected files ending in {', '.join(MESH_SUFFIXES)})"
        )
    meshes_per_dir: dict[Path, int] = {}
    for p in files:
        meshes_per_dir[p.parent] = meshes_per_dir.get(p.parent, 0) + 1
    for p in files:
        parts = p.relative_to(folder).parts
        category = parts[0] if len(parts) >= 2 else "default"
        # Toys4k keeps one object per folder (category/object/mesh.obj): the folder names the object.
        case_id = parts[-2] if len(parts) >= 3 and meshes_per_dir[p.parent] == 1 else p.stem
        try:
            if check_case_id(case_id) is None:
                raise UnsafeCaseId(f"unusable case id {case_id!r} (blank or padded with spaces)")
        except UnsafeCaseId as exc:
            raise SuiteError(f"{p}: {exc}; rename it") from None
        if case_id in found:
            other = found[case_id][1].relative_to(folder)
            raise SuiteError(
                f"{folder}: duplicate mesh id {case_id!r}: {other} and {p.relative_to(folder)}; rename one of them"
            )
        found[case_id] = (category, p)

    problems: list[str] = []
    caption_of: dict[str, str | None] = {}
    category_of: dict[str, str] = {}
    captions_path = Path(captions).expanduser() if captions is not None else folder / CAPTIONS_FILE
    if captions is not None and not captions_path.is_file():
        raise SuiteError(f"{captions_path}: captions file not found")
    if captions_path.is_file():
        caption_of, category_of, problems = read_captions(captions_path, set(found))

    cases = []
    for case_id, (category, p) in found.items():
        cat = category_of.get(case_id, category)
        if case_id in category_of and category != "default" and category_of[case_id] != category:
            problems.append(
                f"{p}: category {category!r} from the folder differs from {category_of[case_id]!r} "
                f"in {captions_path.name}; using {category_of[case_id]!r}"
            )
        cases.append(
            Case(
                id=case_id,
                category=cat,
                ref_mesh=str(p),
                caption=caption_of.get(case_id),
                meta={"up": mesh_up(p, up), "file": p.relative_to(folder).as_posix()},
            )
        )
    return Suite(
        name=f"meshes:{folder.name}", kind="meshes", source=str(folder), cases=cases, problems=problems
    )


def read_captions(path: Path, known_ids: set[str]) -> tuple[dict[str, str | None], dict[str, str], list[str]]:
    """Read a captions CSV (columns ``id``, ``caption``, optional ``category``; header names case-insensitive).

    Returns (caption by id, category by id, problems). Rows without an id, duplicate ids and ids that are not
    in ``known_ids`` are skipped with a ``"FILE:LINE: reason"`` problem.
    """
    problems: list[str] = []
    captions: dict[str, str | None] = {}
    categories: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise SuiteError(f"{path}: empty captions file; expected a header with columns id,caption")
            cols = [h.strip().lower() for h in header]
            if "id" not in cols or "caption" not in cols:
                raise SuiteError(
                    f"{path}:1: captions header must have columns id and caption; found {header}"
                )
            i_id, i_cap = cols.index("id"), cols.index("caption")
            i_cat = cols.index("category") if "category" in cols else None
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(cols):
                    problems.append(
                        f"{path}:{line}: expected {len(cols)} columns, found {len(row)}; row skipped"
                    )
                    continue
                try:
                    case_id = check_case_id(row[i_id].strip())
                except UnsafeCaseId:
                    case_id = None  # such an id names no mesh file of this folder
                if case_id is None:
                    problems.append(f"{path}:{line}: missing or invalid id; row skipped")
                    continue
                if case_id in captions:
                    problems.append(f"{path}:{line}: duplicate id {case_id!r}; row skipped (first one kept)")
                    continue
                if case_id not in known_ids:
                    problems.append(f"{path}:{line}: id {case_id!r} has no mesh file; row skipped")
                    continue
                caption = row[i_cap].strip()
                if not caption:
                    problems.append(f"{path}:{line}: empty caption for {case_id!r}")
                captions[case_id] = caption or None
                if i_cat is not None and row[i_cat].strip():
                    categories[case_id] = row[i_cat].strip()
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise SuiteError(f"{path}: malformed CSV ({exc})") from None
    return captions, categories, problems
