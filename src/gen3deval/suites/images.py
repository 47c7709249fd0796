"""``images:DIR``: bring your own images (image-to-3D without references).

Every ``.jpg/.jpeg/.png/.webp`` file directly in DIR (case-insensitive suffix, hidden files skipped) is a case:
id = file stem, category ``default``, ``image`` = absolute path, no reference. Files that share a stem
(``a.jpg`` and ``a.PNG``) are all kept, each with its suffix in the id (``a_jpg``, ``a_png``), and the suite's
``problems`` say so (a warning): a photo is never silently skipped. A stem that is not a safe case id (control
characters, ...) raises :class:`~gen3deval.errors.SuiteError`. Every image is decoded when the suite loads: an
empty, truncated or undecodable file keeps its case, marked to fail with the file named (its reference stage
fails; no generator sees it), and is listed in ``Suite.problems``.
"""

from __future__ import annotations

from pathlib import Path

from gen3deval.errors import SuiteError
from gen3deval.suites.base import Case
from gen3deval.suites.suite import Suite, UnsafeCaseId, check_case_id, image_problem, require_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def load_images(path: Path | None) -> Suite:
    """Load every image file in the folder ``path`` as a case (sorted by id)."""
    folder = require_dir(path, "images")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise SuiteError(f"{folder}: no images found (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        try:
            if check_case_id(f.stem) is None:
                raise UnsafeCaseId(f"unusable case id {f.stem!r} (blank or padded with spaces)")
        except UnsafeCaseId as exc:
            raise SuiteError(f"{f}: {exc}; rename the file") from None
        by_stem.setdefault(f.stem, []).append(f)
    by_id: dict[str, Path] = {stem: group[0] for stem, group in by_stem.items() if len(group) == 1}
    notes: list[str] = []
    for stem, group in by_stem.items():
        if len(group) == 1:
            continue
        ids = [f"{stem}_{f.suffix[1:].lower()}" for f in group]
        clash = [i for i in ids if i in by_id or i in by_stem or ids.count(i) > 1]
        if clash:
            names = ", ".join(f.name for f in group)
            raise SuiteError(
                f"{folder}: {names} share the id {stem!r} and {clash[0]!r} is taken too; rename one of them"
            )
        by_id.update(zip(ids, group, strict=True))
        kept = ", ".join(f"{f.name} as {i!r}" for f, i in zip(group, ids, strict=True))
        notes.append(f"{folder}: {len(group)} images share the id {stem!r}: kept {kept}")
    cases: list[Case] = []
    problems: list[str] = list(notes)
    for i in sorted(by_id):
        case, problem = image_problem(Case(id=i, category="default", image=str(by_id[i])), None)
        cases.append(case)
        if problem is not None:
            problems.append(problem)
    return Suite(
        name=f"images:{folder.name}", kind="images", source=str(folder), cases=cases, problems=problems
    )
