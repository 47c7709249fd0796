"""Run specs and named protocol presets (PROTOCOLS.md sections 10-11), validated before any work.

A run spec is a YAML mapping (every key optional)::

    suite: manifest:data/manifest.jsonl      # or `suites: [...]`; an entry may be a mapping of options:
    #   {spec: manifest:FILE, categories: [tool, food], up: z, limit: 20}   (meshes: also captions: FILE)
    systems:                                 # names, NAME[@LABEL]:key=value,... strings, or mappings
      - oracle
      - files@other_model:dir=outputs/other  # NAME[@LABEL]:key=value,... (values read as YAML scalars)
      - name: files
        label: my_model                      # the name shown in reports (default: name)
        settings: {dir: outputs/my_model}
    protocol: default                        # or {name: default, samples: 20000, ...overrides}
    out: runs/my_run
    jobs: 2
    limit: 10                                # a sample of N cases of each suite, stratified across categories
    seed: 0                                  # the seed of that sample
    retries: 2                               # retries of transient errors (remote systems)

Relative paths inside a spec file (suite paths, ``captions``, ``out``, path settings such as ``dir``) are
relative to the folder of the spec file. Command-line flags override the spec. Every error is a
:class:`~gen3deval.errors.ConfigError` whose message starts with the field, e.g. ``systems[1].settings.dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen3deval.errors import ConfigError
from gen3deval.execute.registry import EXECUTORS
from gen3deval.execute.result import Limits
from gen3deval.metrics.base import (
    ALL_IMAGE_KEYS,
    IMAGE_KEYS,
    MODEL_OF,
    ON_REQUEST_KEYS,
    REFERENCE_FREE_KEYS,
    fscore_key,
    geometry_metric_names,
)
from gen3deval.metrics.base import UNAVAILABLE_METRICS as _UNAVAILABLE_METRICS

# Metric lists derived from the metric registry (gen3deval.metrics.base, the single source of truth).
# Geometry metrics computed by gen3deval.compare, in row order; `fscore` expands to one key per threshold.
GEOMETRY_METRICS = geometry_metric_names()
# The default protocol's: all but best_iou, the CAD protocol's own IoU (its own normalisation and
# alignment), computed only where a protocol asks for it (the gencad preset).
DEFAULT_GEOMETRY_METRICS = tuple(m for m in GEOMETRY_METRICS if m not in ON_REQUEST_KEYS)
# Model-free image metrics computed by gen3deval.metrics.image.image_metrics (every protocol's default).
IMAGE_METRICS = IMAGE_KEYS
# Every metric of candidate vs reference renders: the model-free ones, LPIPS and CLIP image similarity.
ALL_IMAGE_METRICS = ALL_IMAGE_KEYS
# Reference-free learned metrics (clip_score, clip_score_clamped, clip_image_to_3d): listed under `metrics`.
REFERENCE_FREE_METRICS = REFERENCE_FREE_KEYS
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
# Metrics defined in PROTOCOLS.md whose implementation does not exist yet in this package: {key: why}.
UNAVAILABLE_METRICS = dict(_UNAVAILABLE_METRICS)
TASKS = ("mesh", "image-to-threejs", "image-to-cadquery", "text-to-3d")
NORMALIZE = ("bbox", "sphere", "inertia", "none")
ALIGN = ("none", "pca", "rot24", "pca+icp", "rot24+icp")
MATERIALS = ("asset", "grey")
BACKGROUNDS = ("white", "black")
_RIG_RE = re.compile(r"^(ref|trellis8|turntable:[1-9][0-9]*)$")


@dataclass(frozen=True)
class Protocol:
    """Everything that decides a score; fingerprinted into every result row.

    Attributes:
        name, version: the preset (a changed parameter keeps the name; the fingerprint records it).
        task: what systems are asked for (``mesh``, ``image-to-threejs``, ``image-to-cadquery``, ``text-to-3d``).
        normalize, align: PROTOCOLS.md sections 2-3, applied by the geometry metrics.
        samples, seed: surface points per mesh and the sampling seed (section 4).
        thresholds: F-score distances in normalised units (fractions of the unit side).
        iou_resolution: grid side of the volume-IoU fallback.
        metrics: geometry metric names (``fscore`` expands to ``fscore@T`` per threshold) and the
            reference-free learned metrics (``clip_score``, ``clip_score_clamped``, ``clip_image_to_3d``).
        image_metrics: image metric keys, computed between candidate and reference renders of ``rig``
            (model-free ones, and the learned ``lpips`` and ``clip_image_sim``).
        rig: camera rig of the candidate renders (and of the reference renders they are compared with).
        ref_rig: rig of the reference image rendered for cases that have no input image.
        render_size: square render size in pixels. material/background: section 6.
        language: program language asked of code systems (``threejs``/``cadquery``), if any.
        limits: sandbox limits of every executed program.
        clip_model: CLIP model (a Hugging Face id from the local cache, or a folder) of the CLIP metrics;
            None means the default, ``openai/clip-vit-base-patch32``.
    """

    name: str
    version: str = "1"
    task: str = "mesh"
    normalize: str = "bbox"
    align: str = "none"
    samples: int = 100_000
    seed: int = 0
    thresholds: tuple[float, ...] = (0.01, 0.02, 0.05)
    iou_resolution: int = 128
    metrics: tuple[str, ...] = DEFAULT_GEOMETRY_METRICS
    image_metrics: tuple[str, ...] = IMAGE_METRICS
    rig: str | None = "ref"
    ref_rig: str = "ref"
    render_size: int = 512
    material: str = "asset"
    background: str = "white"
    language: str | None = None
    limits: Limits = field(default_factory=Limits)
    clip_model: str | None = None

    def geometry_keys(self) -> list[str]:
        """The geometry metric keys of a result row, in order (``fscore`` expanded per threshold)."""
        keys: list[str] = []
        for m in self.metrics:
            if m == "fscore":
                keys += [fscore_key(t) for t in self.thresholds]
            elif m in GEOMETRY_METRICS:
                keys.append(m)
        return keys

    def metric_keys(self) -> list[str]:
        """Every metric key of a result row: geometry, then model metrics, then image metrics."""
        model = [m for m in self.metrics if m not in GEOMETRY_METRICS]
        return self.geometry_keys() + model + list(self.image_metrics)

    @property
    def renders(self) -> bool:
        """Whether candidates (and references) are rendered with ``rig``."""
        return self.rig is not None

    def learned(self) -> dict[str, str]:
        """{metric key: model (``clip``/``lpips``)} of the learned metrics this protocol computes."""
        keys = [*self.metrics, *self.image_metrics]
        return {k: MODEL_OF[k] for k in keys if k in MODEL_OF}

    def clip_model_id(self) -> str:
        """The CLIP model of the CLIP metrics (``clip_model``, or the default)."""
        return self.clip_model or DEFAULT_CLIP_MODEL

    def reference_free(self) -> list[str]:
        """The reference-free metric keys (scored for cases without a reference mesh too)."""
        return [m for m in self.metrics if m in REFERENCE_FREE_METRICS]

    def unavailable(self) -> list[str]:
        """Reasons why some metric of this protocol cannot be computed by this version (empty when all can)."""
        return [UNAVAILABLE_METRICS[m] for m in self.metrics if m in UNAVAILABLE_METRICS]

    def params(self) -> dict[str, Any]:
        """The JSON-able parameters (what the fingerprint records)."""
        d = dataclasses.asdict(self)
        d["thresholds"] = list(self.thresholds)
        d["metrics"] = list(self.metrics)
        d["image_metrics"] = list(self.image_metrics)
        d["limits"] = self.limits.to_dict()
        return d

    def params_hash(self) -> str:
        """sha256 of :meth:`params` (canonical JSON), 16 hex digits."""
        return stable_hash(self.params())


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of canonical JSON (sorted keys), first ``n`` hex digits."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


# Named presets. Versions change when a preset's meaning changes. Version 2 (gen3deval 0.2): candidate and
# reference surface samples from independent streams of the seed, PSNR capped at 100 dB, volume IoU exact
# only for shells that do not cross themselves and undefined (null) when the reference encloses no volume.
PROTOCOLS: dict[str, Protocol] = {
    # Mesh vs mesh (image-to-3D, reconstruction): every geometry metric, renders with the `ref` view.
    "default": Protocol(name="default", version="2"),
    # Code3DBench style: image -> Three.js program; scored as in the paper (CD, F@1/2/5, NC) + image metrics
    # (SSIM, MSE, ... and the learned LPIPS and CLIP image similarity). Version 3 added lpips, clip_image_sim.
    "code3d": Protocol(
        name="code3d",
        version="3",
        task="image-to-threejs",
        metrics=("chamfer_l2", "fscore", "normal_consistency"),
        image_metrics=(*IMAGE_METRICS, "lpips", "clip_image_sim"),
        language="threejs",
        clip_model=DEFAULT_CLIP_MODEL,
    ),
    # GenCAD-Code: image -> CadQuery; inertia normalisation, best IoU over proper PCA alignments, VSR in the report.
    # Version 3 adds mecagent_iou, the compat:mecagent IoU (surface voxels, mirror images accepted), which the
    # report shows apart, beside the honest numbers, so published mecagent numbers can be reproduced.
    "gencad": Protocol(
        name="gencad",
        version="3",
        task="image-to-cadquery",
        normalize="inertia",
        metrics=("chamfer_l2", "chamfer_l2_sum", "best_iou", "mecagent_iou"),
        image_metrics=(),
        language="cadquery",
    ),
    # Your own photos -> 3D (an image suite: no reference meshes): the report shows each photo beside 8 TRELLIS
    # views of every candidate, textured and grey, with job and mesh stats, and clip_image_to_3d (the photo vs
    # each view, the TRELLIS image-to-3D protocol) scores them. The default protocol of a run whose suites are
    # all image suites. Version 3 added clip_image_to_3d.
    "photo3d": Protocol(
        name="photo3d",
        version="3",
        metrics=("clip_image_to_3d",),
        image_metrics=(),
        rig="trellis8",
        clip_model=DEFAULT_CLIP_MODEL,
    ),
    # Text -> 3D, the TRELLIS/Toys4k protocol: the CLIP score over the 8 TRELLIS views composited over white.
    "clip3d": Protocol(
        name="clip3d",
        task="text-to-3d",
        metrics=("clip_score",),
        image_metrics=(),
        rig="trellis8",
        clip_model=DEFAULT_CLIP_MODEL,
    ),
}


def get_protocol(spec: str | dict[str, Any] | Protocol | None, field_name: str = "protocol") -> Protocol:
    """A preset by name, or a mapping ``{name: PRESET, <field>: <value>, ...}`` of overrides on a preset."""
    if isinstance(spec, Protocol):
        return spec
    if spec is None:
        spec = "default"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{field_name}: expected a preset name or a mapping, got {type(spec).__name__}")
    overrides = dict(spec)
    name = overrides.pop("name", "default")
    if name not in PROTOCOLS:
        raise ConfigError(
            f"{field_name}.name: unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}"
        )
    base = PROTOCOLS[name]
    fields = {f.name: f for f in dataclasses.fields(Protocol)}
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields or key == "version":
            known = ", ".join(k for k in fields if k not in ("name", "version"))
            raise ConfigError(f"{field_name}.{key}: unknown protocol field; known: {known}")
        values[key] = _coerce(f"{field_name}.{key}", key, value, getattr(base, key))
    proto = dataclasses.replace(base, **values)
    validate_protocol(proto, field_name)
    return proto


def _coerce(where: str, key: str, value: Any, default: Any) -> Any:
    if key == "limits":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of sandbox limits")
        known = {f.name: f for f in dataclasses.fields(Limits)}
        for k, v in value.items():
            if k not in known:
                raise ConfigError(f"{where}.{k}: unknown limit; known: {', '.join(known)}")
            want = type(getattr(Limits(), k))
            if want is bool and not isinstance(v, bool):
                raise ConfigError(f"{where}.{k}: expected true/false, got {v!r}")
            if want in (int, float) and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0):
                raise ConfigError(f"{where}.{k}: expected a positive number, got {v!r}")
        return dataclasses.replace(default, **{k: type(getattr(Limits(), k))(v) for k, v in value.items()})
    if isinstance(default, tuple) or key in ("metrics", "image_metrics", "thresholds"):
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if key == "thresholds":
            if not value or not all(
                isinstance(t, int | float) and not isinstance(t, bool) and t > 0 for t in value
            ):
                raise ConfigError(f"{where}: expected a list of positive numbers, got {value!r}")
            return tuple(float(t) for t in value)
        if not all(isinstance(t, str) for t in value):
            raise ConfigError(f"{where}: expected a list of names, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (value <= 0 and key != "seed")
            or value < 0
        ):
            raise ConfigError(
                f"{where}: expected a {'non-negative' if key == 'seed' else 'positive'} integer, got {value!r}"
            )
        return value
    if value is None and key in ("rig", "language", "clip_model"):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def validate_protocol(p: Protocol, field_name: str = "protocol") -> None:
    """Raise ConfigError naming the first wrong field of ``p``."""

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{field_name}.{key}: {msg}")

    if p.task not in TASKS:
        raise bad("task", f"unknown task {p.task!r}; known: {', '.join(TASKS)}")
    if p.normalize not in NORMALIZE:
        raise bad("normalize", f"unknown normalisation {p.normalize!r}; known: {', '.join(NORMALIZE)}")
    if p.align not in ALIGN:
        raise bad("align", f"unknown alignment {p.align!r}; known: {', '.join(ALIGN)}")
    if p.samples < 100:
        raise bad("samples", f"at least 100 surface samples are needed, got {p.samples}")
    if not 8 <= p.iou_resolution <= 1024:
        raise bad("iou_resolution", f"expected 8..1024, got {p.iou_resolution}")
    if not 16 <= p.render_size <= 4096:
        raise bad("render_size", f"expected 16..4096 pixels, got {p.render_size}")
    known = set(GEOMETRY_METRICS) | set(REFERENCE_FREE_METRICS) | set(UNAVAILABLE_METRICS)
    for m in p.metrics:
        if m in ALL_IMAGE_METRICS:
            raise bad(
                "metrics", f"{m!r} compares candidate and reference renders: list it under image_metrics"
            )
        if m not in known:
            raise bad("metrics", f"unknown metric {m!r}; known: {', '.join(sorted(known))}")
    for m in p.image_metrics:
        if m not in ALL_IMAGE_METRICS:
            raise bad("image_metrics", f"unknown image metric {m!r}; known: {', '.join(ALL_IMAGE_METRICS)}")
    if p.reference_free() and p.rig is None:
        raise bad("rig", f"{', '.join(p.reference_free())} score(s) the candidate's renders: set a rig")
    for key in ("rig", "ref_rig"):
        value = getattr(p, key)
        if value is not None and not _RIG_RE.match(value):
            raise bad(key, f"unknown rig {value!r}; known: ref, trellis8, turntable:N")
    if p.image_metrics and p.rig is None:
        raise bad("rig", "image metrics need candidate renders: set a rig or image_metrics: []")
    if p.material not in MATERIALS:
        raise bad("material", f"unknown material {p.material!r}; known: {', '.join(MATERIALS)}")
    if p.background not in BACKGROUNDS:
        raise bad("background", f"unknown background {p.background!r}; known: {', '.join(BACKGROUNDS)}")
    if p.language is not None and p.language not in EXECUTORS:
        raise bad("language", f"unknown language {p.language!r}; known: {', '.join(EXECUTORS)}")


@dataclass(frozen=True)
class SystemSpec:
    """One system of a run: registry ``name``, the ``label`` shown in results (unique in a run), settings.

    ``base_dir`` is the folder that relative path settings are resolved against (the spec file's folder).
    """

    name: str
    label: str
    settings: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "settings": self.settings, "base_dir": self.base_dir}


DEFAULT_SUITES = ("quickstart",)
DEFAULT_SYSTEMS = ("oracle", "bbox", "boxes", "sphere")

# A suite entry: a spec string ``KIND:PATH``, or a mapping ``{"spec": KIND:PATH, <suite option>: value, ...}``.
SuiteEntry = str | dict[str, Any]


@dataclass(frozen=True)
class RunSpec:
    """A validated run: suites (``KIND:PATH``), systems, protocol, output folder, concurrency.

    ``suites`` holds spec strings, or mappings ``{"spec": ..., "categories": [...], "up": ..., ...}`` for suites
    with options (see :func:`suite_entry_parts`). ``jobs`` is the number of stage workers (processes; 1 runs
    in-process). ``limit`` keeps a sample of N cases of each suite, stratified across categories and drawn
    with ``seed`` (:func:`gen3deval.suites.suite.stratified_sample`). ``retries`` is how often a transient error
    is retried before the stage fails.
    """

    suites: tuple[SuiteEntry, ...]
    systems: tuple[SystemSpec, ...]
    protocol: Protocol
    out: Path
    jobs: int
    limit: int | None = None
    retries: int = 2
    seed: int = 0
    executor: str = "local"
    ray_address: str | None = None
    ray_shared_dir: str | None = None
    shard: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "suites": list(self.suites),
            "systems": [s.to_dict() for s in self.systems],
            "protocol": self.protocol.params(),
            "out": str(self.out),
            "jobs": self.jobs,
            "limit": self.limit,
            "seed": self.seed,
            "retries": self.retries,
        }
        # Where stages run changes no number: recorded only when not the default (older specs stay as they were).
        if self.executor != "local":
            d.update(executor=self.executor, ray_address=self.ray_address, ray_shared_dir=self.ray_shared_dir)
        if self.shard is not None:
            d["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return d


SPEC_KEYS = (
    "suite",
    "suites",
    "systems",
    "protocol",
    "out",
    "jobs",
    "limit",
    "seed",
    "retries",
    "executor",
    "ray_address",
    "ray_shared_dir",
    "shard",
)
EXECUTORS_KINDS = ("local", "ray")


def parse_shard(value: Any, where: str = "shard") -> tuple[int, int] | None:
    """``"I/N"`` (1 <= I <= N) -> (I, N); None stays None; anything else is a ConfigError naming ``where``."""
    if value is None:
        return None
    text = str(value).strip()
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 1 <= int(i) <= int(n):
        raise ConfigError(f"{where}: expected I/N with 1 <= I <= N (e.g. 2/8), got {value!r}")
    return int(i), int(n)


def default_jobs() -> int:
    """Worker count when none is given: the usable CPU cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML run spec into a mapping (ConfigError naming the file when it cannot)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: run spec not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the run spec ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a run spec must be a mapping of fields, got {type(data).__name__}")
    return data


def suite_entry_parts(entry: SuiteEntry) -> tuple[str, dict[str, Any]]:
    """(spec string, options) of a suite entry of :attr:`RunSpec.suites`."""
    if isinstance(entry, str):
        return entry, {}
    options = dict(entry)
    return str(options.pop("spec")), options


def _int_field(key: str, value: Any, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key}: expected {what}, got {value!r}")


def build_spec(
    data: dict[str, Any] | None = None,
    *,
    base_dir: str | Path = ".",
    suites: list[str] | None = None,
    systems: list[str] | None = None,
    protocol: str | None = None,
    out: str | Path | None = None,
    jobs: int | None = None,
    limit: int | None = None,
    seed: int | None = None,
    default_out: str | Path | None = None,
    executor: str | None = None,
    ray_address: str | None = None,
    ray_shared_dir: str | None = None,
    shard: str | None = None,
) -> RunSpec:
    """Validate a spec mapping (from YAML, may be empty) with command-line overrides into a :class:`RunSpec`.

    Flags (keyword arguments) replace the corresponding spec field; ``systems`` take the string form
    ``NAME[@LABEL][:key=value,...]``. With nothing given: the quickstart suite, the offline baselines
    oracle/bbox/boxes/sphere, the default protocol and ``runs/quickstart``.
    """
    data = dict(data or {})
    base = Path(base_dir)
    for key in data:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{key}: unknown field; known: {', '.join(SPEC_KEYS)}")
    if "suite" in data and "suites" in data:
        raise ConfigError("suite: give either `suite` or `suites`, not both")

    from gen3deval.spec_entries import expand_presets, suite_entry, system_spec

    # Suites.
    suite_list: list[SuiteEntry]
    if suites:
        suite_list = [suite_entry(s, f"--suite[{i}]", None) for i, s in enumerate(suites)]
    elif "suites" in data or "suite" in data:
        key = "suites" if "suites" in data else "suite"
        raw = data[key]
        raw_list = [raw] if isinstance(raw, str | dict) else raw
        if not isinstance(raw_list, list) or not raw_list:
            raise ConfigError(f"{key}: expected a suite spec KIND:PATH or a non-empty list of them")
        suite_list = [
            suite_entry(s, f"{key}[{i}]" if isinstance(raw, list) else key, base)
            for i, s in enumerate(raw_list)
        ]
    else:
        suite_list = list(DEFAULT_SUITES)

    # Systems.
    raw_systems: list[Any]
    if systems:
        raw_systems = list(systems)
        where = "--system"
    elif "systems" in data:
        raw_systems = data["systems"]
        where = "systems"
        if isinstance(raw_systems, str):
            raw_systems = [raw_systems]
        if not isinstance(raw_systems, list) or not raw_systems:
            raise ConfigError(
                "systems: expected a non-empty list of system names or {name, settings} mappings"
            )
    else:
        raw_systems = list(DEFAULT_SYSTEMS)
        where = "systems"
    specs: list[SystemSpec] = []
    for loc, item in expand_presets(raw_systems, where):
        spec = system_spec(item, loc, where, base if where != "--system" else Path("."))
        if any(s.label == spec.label for s in specs):
            raise ConfigError(
                f"{loc}.label: system label {spec.label!r} appears twice; give one a label "
                f"(`label:` in a mapping, or NAME@LABEL)"
            )
        specs.append(spec)

    if (
        protocol is None
        and data.get("protocol") is None
        and all(suite_entry_parts(e)[0].split(":", 1)[0] == "images" for e in suite_list)
    ):
        protocol = "photo3d"  # photos without references: renders to look at, nothing to score against
    proto = get_protocol(protocol if protocol is not None else data.get("protocol"))

    if jobs is None:
        jobs = data.get("jobs", default_jobs())
    _int_field("jobs", jobs, 1)
    if limit is None:
        limit = data.get("limit")
    _int_field("limit", limit, 1)
    if seed is None:
        seed = data.get("seed", 0)
    if seed is None:
        raise ConfigError("seed: expected an integer >= 0, got None")
    _int_field("seed", seed, 0)
    retries = data.get("retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ConfigError(f"retries: expected an integer 0..10, got {retries!r}")

    if out is not None:
        out_path = Path(out)
    elif "out" in data:
        if not isinstance(data["out"], str) or not data["out"]:
            raise ConfigError(f"out: expected a folder path, got {data['out']!r}")
        out_path = base / data["out"]
    elif default_out is not None:
        out_path = Path(default_out)
    else:
        out_path = Path("runs") / "quickstart"
    executor = executor if executor is not None else data.get("executor", "local")
    if executor not in EXECUTORS_KINDS:
        raise ConfigError(f"executor: expected one of {', '.join(EXECUTORS_KINDS)}, got {executor!r}")
    ray_address = ray_address if ray_address is not None else data.get("ray_address")
    ray_shared_dir = ray_shared_dir if ray_shared_dir is not None else data.get("ray_shared_dir")
    for key, value in (("ray_address", ray_address), ("ray_shared_dir", ray_shared_dir)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        if value is not None and executor != "ray":
            raise ConfigError(f"{key}: only applies with executor: ray")
    shard_pair = parse_shard(shard if shard is not None else data.get("shard"))
    if out is None and "out" not in data:
        if ray_shared_dir is not None and not out_path.is_absolute():
            out_path = Path(ray_shared_dir) / out_path  # every node sees the run folder
        if shard_pair is not None:
            from gen3deval.engine.shards import shard_name

            # Each shard in its own folder (runs/x/shard-1-of-3), merged later with `gen3deval merge`.
            out_path = out_path / shard_name(shard_pair)
    return RunSpec(
        suites=tuple(suite_list),
        systems=tuple(specs),
        protocol=proto,
        out=out_path,
        jobs=int(jobs),
        limit=limit,
        retries=retries,
        seed=int(seed),
        executor=str(executor),
        ray_address=ray_address,
        ray_shared_dir=ray_shared_dir,
        shard=shard_pair,
    )


def protocol_from_params(params: dict[str, Any]) -> Protocol:
    """Rebuild a :class:`Protocol` from :meth:`Protocol.params` (as stored in a run's meta)."""
    d = dict(params)
    d["thresholds"] = tuple(d.get("thresholds", ()))
    d["metrics"] = tuple(d.get("metrics", ()))
    d["image_metrics"] = tuple(d.get("image_metrics", ()))
    d["limits"] = Limits(**d.get("limits", {}))
    names = {f.name for f in dataclasses.fields(Protocol)}
    return Protocol(**{k: v for k, v in d.items() if k in names})
