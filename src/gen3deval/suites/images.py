"""``images:DIR``: bring your own images (image-to-3D without references).

Every ``.jpg/.jpeg/.png/.webp`` file directly in DIR (case-insensitive suffix, hidden files skipped) is a case:
id = file stem, category ``default``, ``image`` = absolute path, no reference. Two files with the same stem
(``a.jpg`` and ``a.png``) raise :class:`~gen3deval.errors.SuiteError`: the id would be ambiguous, as does a
stem that is not a safe case id (control characters, ...). Every image is decoded when the suite loads: an
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
    by_id: dict[str, Path] = {}
    for f in files:
        if f.stem in by_id:
            raise SuiteError(
                f"{folder}: duplicate image id {f.stem!r}: {by_id[f.stem].name} and {f.name}; rename one of them"
            )
        try:
            if check_case_id(f.stem) is None:
                raise UnsafeCaseId(f"unusable case id {f.stem!r} (blank or padded with spaces)")
        except UnsafeCaseId as exc:
            raise SuiteError(f"{f}: {exc}; rename the file") from None
        by_id[f.stem] = f
    cases: list[Case] = []
    problems: list[str] = []
    for i in sorted(by_id):
        case, problem = image_problem(Case(id=i, category="default", image=str(by_id[i])), None)
        cases.append(case)
        if problem is not None:
            problems.append(problem)
    return Suite(
        name=f"images:{folder.name}", kind="images", source=str(folder), cases=cases, problems=problems
    )
