"""The :class:`Suite`, the registry of suite kinds and :func:`load_suite`.

A suite spec is ``KIND:PATH`` (``images:DIR``, ``meshes:DIR``, ``manifest:FILE_OR_DIR``, ``gencad:FILE``,
``toys4k:DIR``) or a bare built-in name (``quickstart``). Loading never stops at a bad entry: the entry is skipped (or, when only a
referenced file is missing, kept so that the engine marks the case failed with a reason) and the reason is
recorded in ``Suite.problems`` as ``"FILE:LINE: what was wrong"``. A source that cannot be read at all raises
:class:`~gen3deval.errors.SuiteError` naming the file.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gen3deval.errors import ConfigError, SuiteError
from gen3deval.registry import Registry
from gen3deval.suites.base import Case

# Mesh formats a suite may reference; glTF is +Y up by definition, the others follow the `up` option.
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
GLTF_SUFFIXES = (".glb", ".gltf")
UP_AXES = ("y", "z")


@dataclass
class Suite:
    """A loaded suite.

    Attributes:
        name: short display name (e.g. ``"quickstart"``, ``"manifest:lowpoly304"``).
        kind: the suite kind (``images``, ``meshes``, ``manifest``, ``gencad``, ``quickstart``).
        source: the file or folder it was read from (absolute path).
        cases: the cases, in source order (after the ``categories`` and ``limit`` options).
        problems: one line per skipped or suspicious entry: ``"FILE:LINE: reason"`` (or ``"FILE: reason"``).
        options: the options it was loaded with (``limit``, ``categories``, ``up``, ...).
    """

    name: str
    kind: str
    source: str
    cases: list[Case]
    problems: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def categories(self) -> list[str]:
        """Sorted distinct categories of the cases."""
        return sorted({c.category for c in self.cases})

    @property
    def description(self) -> str:
        """One line for run metadata, e.g. ``"manifest:lowpoly304 (304 cases, 8 categories)"``."""
        return f"{self.name} ({len(self.cases)} cases, {len(self.categories)} categories)"

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise KeyError(case_id)


Loader = Callable[..., Suite]

# Suite kinds: name -> loader ``(path: Path | None, **kind_options) -> Suite`` (lazy imports).
SUITE_KINDS: Registry[Loader] = Registry("suite kind")
SUITE_KINDS.add("images", "gen3deval.suites.images:load_images")
SUITE_KINDS.add("meshes", "gen3deval.suites.meshes:load_meshes")
SUITE_KINDS.add("manifest", "gen3deval.suites.manifest:load_manifest")
SUITE_KINDS.add("gencad", "gen3deval.suites.gencad:load_gencad")
SUITE_KINDS.add("quickstart", "gen3deval.suites.quickstart:load_quickstart")
SUITE_KINDS.add("toys4k", "gen3deval.suites.toys4k:load_toys4k")

# One line per kind, for `gen3deval list` and error messages.
SUITE_KIND_HELP: dict[str, str] = {
    "quickstart": "quickstart: 16 built-in CC0 low-poly objects, 2 per category (no path)",
    "images": "images:DIR: every jpg/jpeg/png/webp in DIR (id = file stem), no reference",
    "meshes": "meshes:DIR: mesh files as references (DIR/[category/]id.ext), optional captions.csv",
    "manifest": "manifest:FILE|DIR: manifest.jsonl or .json list of {id, category, path, caption?, image?, prompt?}",
    "gencad": "gencad:FILE: GenCAD-Code jsonl {question_id, text, ground_truth (CadQuery), image}",
    "toys4k": "toys4k:DIR: Toys4k as TRELLIS lays it out: metadata.csv {sha256, file_identifier, captions} + "
    "toys4k_obj_files/<category>/<name>/mesh.obj (caption: longest|first)",
}

# Kinds that need no path.
_BUILTIN = ("quickstart",)


# Options every kind takes (applied after loading), and the per-kind options each loader declares.
COMMON_OPTIONS = ("limit", "seed", "categories")
# Kind options that take one of a few words (any kind whose loader declares the option): name -> values.
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"caption": ("longest", "first")}


class SuiteOptionError(ConfigError):
    """A bad suite option; ``key`` is the option's name (for messages like ``suites[0].up: ...``)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"suite option {detail}")
        self.key = key
        self.detail = detail


def check_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate the options of a suite of ``kind``; returns the loader's own keyword options.

    Common options: ``limit`` (positive int), ``seed`` (int >= 0), ``categories`` (list or comma string).
    Kind options: those the loader declares (``up`` for meshes/manifest/toys4k, ``captions`` for meshes,
    ``caption`` for toys4k: one of :data:`OPTION_CHOICES`; None there means the loader's default).
    Raises :class:`SuiteOptionError` naming the option.
    """
    loader = SUITE_KINDS.get(kind)
    params = inspect.signature(loader).parameters
    kind_options: dict[str, Any] = {}
    for key, value in options.items():
        if key == "limit":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SuiteOptionError(key, f"limit={value!r} is invalid; expected a positive integer")
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SuiteOptionError(key, f"seed={value!r} is invalid; expected an integer >= 0")
        elif key == "categories":
            if value is not None and not isinstance(value, str | list | tuple):
                raise SuiteOptionError(key, f"categories={value!r} is invalid; expected a list of names")
        elif key == "up":
            if value not in UP_AXES:
                raise SuiteOptionError(key, f"up={value!r} is invalid; use 'y' or 'z'")
            if "up" not in params:
                if value != "y":
                    raise SuiteOptionError(key, f"'up' does not apply to suite kind {kind!r}")
                continue
            kind_options[key] = value
        elif key not in params or key == "path":
            extra = [k for k in params if k != "path"]
            known = ", ".join([*COMMON_OPTIONS, *extra])
            raise SuiteOptionError(
                key, f"{key!r} does not apply to suite kind {kind!r}; its options: {known}"
            )
        elif key in OPTION_CHOICES:
            if value is None:
                continue
            if not isinstance(value, str) or value not in OPTION_CHOICES[key]:
                words = " or ".join(repr(v) for v in OPTION_CHOICES[key])
                raise SuiteOptionError(key, f"{key}={value!r} is invalid; use {words}")
            kind_options[key] = value
        else:
            if value is not None and not isinstance(value, str | Path):
                raise SuiteOptionError(key, f"{key}={value!r} is invalid; expected a path")
            kind_options[key] = value
    return kind_options


def load_suite(
    spec: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    categories: str | Iterable[str] | None = None,
    up: str = "y",
    **kind_options: Any,
) -> Suite:
    """Load a suite from ``spec`` (``KIND:PATH`` or a built-in name).

    Args:
        spec: e.g. ``"quickstart"``, ``"images:photos/"``, ``"manifest:data/manifest.jsonl"``.
        limit: keep a sample of ``limit`` cases (after the category filter), stratified across categories
            (see :func:`stratified_sample`), in suite order.
        seed: the sample's seed (the same seed gives the same sample).
        categories: keep only these categories (a list, or a comma-separated string).
        up: ``"y"`` or ``"z"``: the up axis of OBJ/PLY/STL/OFF references (glTF is always +Y up); recorded in
            each case's ``meta["up"]`` for the engine to pass to ``load_mesh``.
        kind_options: options of one kind (``captions=`` for ``meshes``).

    Raises:
        ConfigError: unknown kind, bad option value, or an option the kind does not take.
        SuiteError: the source cannot be read (names the file).
    """
    kind, path = parse_spec(spec)
    options = check_options(kind, {"limit": limit, "seed": seed, "up": up, **kind_options})
    loader = SUITE_KINDS.get(kind)
    suite = loader(path, **options) if kind not in _BUILTIN else loader(**options)
    if not suite.cases:
        shown = "; ".join(suite.problems[:3]) or "no entries"
        raise SuiteError(f"{suite.source}: no usable cases ({len(suite.problems)} problems: {shown})")
    wanted = _parse_categories(categories)
    if wanted is not None:
        known = set(suite.categories)
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ConfigError(
                f"suite {suite.name}: categories {unknown} not found; known: {', '.join(sorted(known)) or 'none'}"
            )
        suite.cases = [c for c in suite.cases if c.category in wanted]
    if limit is not None:
        suite.cases = stratified_sample(suite.cases, limit, seed)
    suite.options = {"limit": limit, "seed": seed, "categories": wanted, "up": up, **kind_options}
    return suite


def stratified_sample(cases: list[Case], n: int, seed: int = 0) -> list[Case]:
    """``n`` of ``cases``, spread over the categories in proportion to their sizes, in the input order.

    Every category gets at least one case when ``n`` >= the number of categories; otherwise ``n``
    categories get one each. Seats go one at a time to the category furthest below its quota
    ``n * size / total`` (Hamilton's largest remainder, ties broken by a seeded hash of the category name);
    within a category the cases with the smallest ``sha256(f"{seed}:{id}")`` are taken. Hash-based, so the
    sample is the same on every platform and Python version, and a larger ``n`` keeps a smaller ``n``'s
    picks within each category.
    """
    if n >= len(cases):
        return list(cases)
    by_cat: dict[str, list[Case]] = {}
    for c in cases:
        by_cat.setdefault(c.category, []).append(c)
    total = len(cases)
    quota = {cat: n * len(members) / total for cat, members in by_cat.items()}
    tie = {cat: _seeded(seed, "category", cat) for cat in by_cat}
    seats = dict.fromkeys(by_cat, 1 if n >= len(by_cat) else 0)
    for _ in range(n - sum(seats.values())):
        open_cats = [cat for cat in by_cat if seats[cat] < len(by_cat[cat])]
        best = max(open_cats, key=lambda cat: (quota[cat] - seats[cat], tie[cat]))
        seats[best] += 1
    chosen: set[int] = set()
    for cat, members in by_cat.items():
        ranked = sorted(members, key=lambda c: _seeded(seed, "case", c.id))
        chosen.update(id(c) for c in ranked[: seats[cat]])
    return [c for c in cases if id(c) in chosen]


def _seeded(seed: int, *parts: str) -> str:
    return hashlib.sha256(":".join([str(seed), *parts]).encode()).hexdigest()


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split ``KIND:PATH`` into (kind, Path); a bare built-in name gives (name, None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"suite spec {spec!r} is empty; expected KIND:PATH or one of: {', '.join(_BUILTIN)}"
        )
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep:
        if spec in _BUILTIN:
            return spec, None
        hint = ""
        if Path(spec).exists():
            hint = (
                f" (to read the path {spec!r}, prefix it with a kind, e.g. manifest:{spec} or meshes:{spec})"
            )
        raise ConfigError(
            f"suite spec {spec!r}: expected KIND:PATH or a built-in name{hint}; kinds: {_kinds()}"
        )
    if kind not in SUITE_KINDS:
        raise ConfigError(f"suite spec {spec!r}: unknown suite kind {kind!r}; kinds: {_kinds()}")
    if kind in _BUILTIN:
        if rest:
            raise ConfigError(f"suite spec {spec!r}: the built-in suite {kind!r} takes no path")
        return kind, None
    if not rest:
        raise ConfigError(f"suite spec {spec!r}: missing the path after '{kind}:'")
    return kind, Path(rest).expanduser()


def _kinds() -> str:
    return ", ".join(SUITE_KINDS.names())


def _parse_categories(categories: str | Iterable[str] | None) -> list[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        items = [c.strip() for c in categories.split(",")]
    else:
        items = [str(c).strip() for c in categories]
    items = [c for c in items if c]
    if not items:
        raise ConfigError("suite option categories is empty; give at least one category")
    return items


# --- helpers shared by the loaders -------------------------------------------------------------------------


def require_dir(path: Path | None, kind: str) -> Path:
    """The folder of an ``images:``/``meshes:`` spec, or SuiteError naming it."""
    if path is None:
        raise SuiteError(f"suite kind {kind!r} needs a folder: {kind}:DIR")
    if not path.exists():
        raise SuiteError(f"{path}: folder not found")
    if not path.is_dir():
        raise SuiteError(f"{path}: not a folder (suite kind {kind!r} reads a folder)")
    return path.resolve()


def require_file(path: Path | None, kind: str) -> Path:
    """The file of a ``manifest:``/``gencad:`` spec, or SuiteError naming it."""
    if path is None:
        raise SuiteError(f"suite kind {kind!r} needs a file: {kind}:FILE")
    if not path.exists():
        raise SuiteError(f"{path}: file not found")
    if not path.is_file():
        raise SuiteError(f"{path}: not a file")
    return path.resolve()


def mesh_up(path: str | Path, up: str) -> str:
    """The up axis to load ``path`` with: glTF is +Y up by definition, other formats follow ``up``."""
    return "y" if Path(path).suffix.lower() in GLTF_SUFFIXES else up


def with_up(case: Case, up: str) -> Case:
    """``case`` with ``meta["up"]`` set for its reference mesh (no change when it has none)."""
    if case.ref_mesh is None:
        return case
    return replace(case, meta={**case.meta, "up": mesh_up(case.ref_mesh, up)})


# Longest case id in UTF-8 bytes: ids name files (``{id}.glb``, ``{id}/2.py``), whose names stop at 255 bytes.
MAX_ID_BYTES = 200


class UnsafeCaseId(ValueError):
    """A case id that cannot be used as a file name; the loaders refuse the suite with the file and line."""


def check_case_id(value: Any) -> str | None:
    """A usable case id as a string, or None (empty, padded, or not a string/int: the entry is skipped).

    Raises :class:`UnsafeCaseId` for an id that is not a safe file name (see :func:`unsafe_id_reason`):
    ids name output files, so such an id is refused, not skipped.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        return None
    reason = unsafe_id_reason(value)
    if reason is not None:
        raise UnsafeCaseId(
            f"unsafe case id {value!r}: {reason} (ids name files: no '/', '\\', control characters, "
            f"leading '.', at most {MAX_ID_BYTES} bytes)"
        )
    return value


def unsafe_id_reason(value: str) -> str | None:
    """Why ``value`` is not a safe file name (``/``, ``\\``, ``..``, absolute, control characters), or None."""
    if not value.isprintable():
        return "it contains control or non-printable characters"
    if "/" in value or "\\" in value:
        return "it contains a path separator"
    if value.startswith("."):
        return "it starts with '.' (a hidden file, or '..' the parent folder)"
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        return f"it is longer than {MAX_ID_BYTES} bytes"
    return None


def check_image(path: str | Path) -> str | None:
    """None when ``path`` is a non-empty image that decodes completely; else the reason, e.g. ``"empty file"``.

    Opens the file with Pillow, verifies it and decodes every pixel (a truncated file fails here rather than
    in a generator).
    """
    p = Path(path)
    try:
        if not p.is_file():
            return "file not found" if not p.exists() else "not a file"
        if p.stat().st_size == 0:
            return "empty file"
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:  # verify() leaves the image unusable: decode from a fresh handle
            width, height = im.size
            # JPEG: decode at 1/8 scale (3x faster; every byte is still read, so truncation is still caught).
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
    except UnidentifiedImageError:
        return "not an image (unknown or unsupported format)"
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error...
        return f"corrupt or truncated image ({type(exc).__name__}: {exc})"
    if width < 1 or height < 1:
        return "image has no pixels"
    return None


def image_problem(case: Case, where: str | None) -> tuple[Case, str | None]:
    """Verify the input image of ``case``: (case, None) when it is fine, else (the case marked with
    ``meta["input_error"]`` so that its reference stage fails naming the file, a problem line)."""
    if case.image is None:
        return case, None
    reason = check_image(case.image)
    if reason is None:
        return case, None
    error = (
        f"image file not found: {case.image}"
        if reason == "file not found"
        else f"input image {case.image}: {reason}"
    )
    problem = f"{error} (case {case.id!r} kept; it will fail)"
    return replace(case, meta={**case.meta, "input_error": error}), (
        f"{where}: {problem}" if where else problem
    )
