"""The system interface: a system turns a case into a candidate (a mesh file or a program).

Systems are registered by name in :data:`SYSTEMS` with lazy ``"module:Class"`` entries, so a remote
system's client library is imported only when a run uses it. The engine creates systems inside its
worker processes and calls :meth:`System.generate`; systems never touch the store.

A system signals a failure of one case with :class:`GenerationFailed` (stored as a failed case with its
``error_class``; the run goes on) and a retryable failure (network hiccup, rate limit) with
:class:`TransientError` (retried by the engine with backoff, ``retries`` times).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gen3deval.errors import ConfigError
from gen3deval.execute.registry import EXECUTORS
from gen3deval.mesh.types import Mesh
from gen3deval.registry import Registry
from gen3deval.suites.base import Case

# Language -> the suffix its programs are written with, from the executor registry
# (prefer gen3deval.execute.program_suffix).
PROGRAM_SUFFIX = {name: ex.suffix for name, ex in EXECUTORS.items()}


@dataclass(frozen=True)
class Candidate:
    """What a system produced for one case: a mesh file (``mesh_path``, with its ``up`` axis) or a program.

    Exactly one of ``mesh_path`` and ``program`` is set; ``language`` names an executor (``threejs``,
    ``cadquery``: :data:`gen3deval.execute.EXECUTORS`) for a program. ``meta`` is free-form JSON-able
    information (model id, tokens, cost) kept with the result. ``files``: other files to keep as artifacts,
    ``{name: path}`` (``answer``: a model's raw answer, which a revision quotes).
    """

    mesh_path: str | None = None
    program: str | None = None
    language: str | None = None
    up: str = "y"
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.mesh_path is None) == (self.program is None):
            raise ValueError("a Candidate is either a mesh file or a program")
        if self.program is not None and self.language not in EXECUTORS:
            raise ValueError(f"program language must be one of {', '.join(EXECUTORS)}, got {self.language!r}")

    @property
    def kind(self) -> str:
        return "mesh" if self.mesh_path is not None else "program"


class GenerationFailed(Exception):
    """A system could not produce a candidate for a case (stored as a failed case, not a crash).

    ``error_class``: ``missing_output``, ``generation_error``, or one of execute.result.ERROR_CLASSES.
    ``files`` ({name: path}) and ``meta`` are kept with the failure (a model's answer that held no program).
    """

    def __init__(
        self,
        error_class: str,
        message: str,
        *,
        files: dict[str, str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.files = dict(files or {})
        self.meta = dict(meta or {})


class TransientError(Exception):
    """A failure that may go away when retried (timeouts, HTTP 429/5xx of a remote system)."""


class System:
    """Base class of systems.

    Subclasses set ``name``, declare their settings in ``settings_schema`` ({key: (type, default)}; a
    default of ``...`` means required) and implement :meth:`generate`. ``needs_reference`` tells the engine
    to hand the reference mesh to :meth:`generate` (offline baselines); ``output`` is the expected
    candidate kind (``mesh``, ``program`` or ``any``), used for progress estimates only.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_reference: ClassVar[bool] = False
    output: ClassVar[str] = "any"
    settings_schema: ClassVar[dict[str, tuple[Any, Any]]] = {}
    path_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: dict[str, Any] | None = None, *, base_dir: str | Path = ".") -> None:
        self.base_dir = Path(base_dir)
        self.settings = self.validate_settings(dict(settings or {}), f"{self.name}.settings", self.base_dir)

    @classmethod
    def validate_settings(cls, settings: dict[str, Any], where: str, base_dir: Path) -> dict[str, Any]:
        """Check ``settings`` against ``settings_schema``; returns them with defaults filled in.

        Raises ConfigError naming ``where.key``. Relative ``path_settings`` resolve against ``base_dir``.
        """
        out: dict[str, Any] = {}
        for key in settings:
            if key not in cls.settings_schema:
                known = ", ".join(cls.settings_schema) or "none"
                raise ConfigError(f"{where}.{key}: unknown setting of system {cls.name!r}; known: {known}")
        for key, (typ, default) in cls.settings_schema.items():
            if key not in settings:
                if default is ...:
                    raise ConfigError(f"{where}.{key}: required setting of system {cls.name!r} is missing")
                out[key] = default
                continue
            value = settings[key]
            ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise ConfigError(f"{where}.{key}: expected {typ.__name__}, got {value!r}")
            if key in cls.path_settings:
                value = str((base_dir / value).resolve()) if not Path(value).is_absolute() else value
            out[key] = value
        cls.check_settings(out, where)
        return out

    @classmethod
    def check_settings(cls, settings: dict[str, Any], where: str) -> None:
        """Extra checks of the filled-in settings (override; raise ConfigError naming ``where.key``)."""

    # -- planning hooks: called in the engine process, before any work; must be cheap -----------------
    def preflight(self, cases: list[Case]) -> list[str]:
        """Check this system against the run's cases before any work.

        Returns warnings to print (e.g. ``files``: "0 of 20 cases have a file; 20 files match no id");
        raises :class:`~gen3deval.errors.ConfigError` for a configuration that cannot work at all.
        """
        return []

    def attempts(self, case: Case) -> int:
        """How many attempts this system makes for ``case`` (>= 1); each is its own pipeline and row."""
        return 1

    def input_fingerprint(self, case: Case, attempt: int) -> str:
        """A digest of everything outside (case, settings, reference) that :meth:`generate` reads for this
        attempt, e.g. the content hash of an output file. Part of the generate stage's key, so a changed
        file is generated (scored) again and an unchanged one is not. ``""``: nothing outside."""
        return ""

    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        """Produce the candidate of ``case`` for ``attempt`` (1-based). ``reference`` is the canonical
        reference mesh when ``needs_reference`` (else None); ``workdir`` is an empty scratch folder."""
        raise NotImplementedError


SYSTEMS: Registry[type[System]] = Registry("system")
SYSTEMS.add("files", "gen3deval.systems.files:FilesSystem")
SYSTEMS.add("oracle", "gen3deval.systems.baselines:OracleSystem")
SYSTEMS.add("bbox", "gen3deval.systems.baselines:BBoxSystem")
SYSTEMS.add("boxes", "gen3deval.systems.baselines:BoxesSystem")
SYSTEMS.add("sphere", "gen3deval.systems.baselines:SphereSystem")
SYSTEMS.add("csm", "gen3deval.systems.csm_system:CsmSystem")
SYSTEMS.add("vlm", "gen3deval.systems.vlm:VlmSystem")
SYSTEMS.add("hf", "gen3deval.systems.hf:HfSystem")

# Names that expand to several labelled systems (``--system csm-all`` -> csm-base, csm-turbo, ...): a function
# returning [{name, label, settings}]; settings given with the preset (``csm-all:key=value``) apply to each.
SYSTEM_PRESETS: Registry[Callable[[], list[dict[str, Any]]]] = Registry("system preset")
SYSTEM_PRESETS.add("csm-all", "gen3deval.systems.csm_system:csm_all_preset")


def create_system(name: str, settings: dict[str, Any] | None = None, *, base_dir: str | Path = ".") -> System:
    """Instantiate the registered system ``name`` with validated settings."""
    cls = SYSTEMS.get(name)
    return cls(settings, base_dir=base_dir)
