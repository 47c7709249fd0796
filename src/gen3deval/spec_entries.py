"""Entries of a run spec: suite entries with options and systems as ``NAME[@LABEL][:key=value,...]`` strings.

Used by :func:`gen3deval.config.build_spec`; every error is a :class:`~gen3deval.errors.ConfigError` that
starts with the field (``suites[0].up``, ``--system[1].settings.dir``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gen3deval.config import SuiteEntry, SystemSpec
from gen3deval.errors import ConfigError


def resolve_suite(spec: str, base: Path) -> str:
    """``KIND:PATH`` with a relative PATH made absolute against ``base`` (the spec file's folder)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or Path(rest).expanduser().is_absolute():
        return spec
    return f"{kind}:{(base / rest).resolve()}"


def suite_entry(raw: Any, loc: str, base: Path | None) -> SuiteEntry:
    """Validate one suite entry (paths resolved against ``base``; None: kept as given, as on the command line)."""
    from gen3deval.suites.suite import SuiteOptionError, check_options, parse_spec

    options: dict[str, Any] = {}
    if isinstance(raw, dict):
        options = dict(raw)
        raw = options.pop("spec", None)
        loc_spec = f"{loc}.spec"
        if raw is None:
            raise ConfigError(
                f"{loc_spec}: missing; a suite mapping is {{spec: KIND:PATH, <option>: value, ...}}"
            )
    else:
        loc_spec = loc
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{loc_spec}: expected a suite spec string KIND:PATH, got {raw!r}")
    try:
        kind, _ = parse_spec(raw)  # as written, so that the message shows it
        check_options(kind, options)
    except SuiteOptionError as exc:
        raise ConfigError(f"{loc}.{exc.key}: {exc.detail}") from None
    except ConfigError as exc:
        raise ConfigError(f"{loc_spec}: {exc}") from None
    spec = resolve_suite(raw.strip(), base) if base is not None else raw.strip()
    if not options:
        return spec
    if isinstance(options.get("categories"), str):
        options["categories"] = [c.strip() for c in options["categories"].split(",") if c.strip()]
    if isinstance(options.get("captions"), str):
        captions = Path(options["captions"]).expanduser()
        if base is not None and not captions.is_absolute():
            captions = (base / captions).resolve()
        options["captions"] = str(captions)
    return {"spec": spec, **options}


# `NAME[@LABEL][:key=value,...]`: a system with its settings in one string (the command line's form).
SYSTEM_STRING = re.compile(r"^(?P<name>[^@:=,\s]+)(?:@(?P<label>[^:]*))?(?::(?P<settings>.*))?$", re.S)
LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


def parse_system_string(text: str, loc: str) -> tuple[str, str | None, dict[str, str]]:
    """Split ``NAME[@LABEL][:key=value,key=value]`` into (name, label or None, raw string settings).

    A comma followed by text without ``=`` belongs to the previous value (``dir=a,b,up=z`` gives
    ``dir: "a,b"``). Raises ConfigError naming ``loc`` and the expected form.
    """
    m = SYSTEM_STRING.match(text.strip())
    if not m:
        raise ConfigError(f"{loc}: expected NAME, NAME@LABEL or NAME:key=value,..., got {text!r}")
    settings: dict[str, str] = {}
    last: str | None = None
    body = m.group("settings")
    if body is not None:
        if not body.strip():
            raise ConfigError(f"{loc}: nothing after ':' in {text!r}; expected NAME:key=value,...")
        for item in body.split(","):
            key, eq, value = item.partition("=")
            if not eq:
                if last is None:
                    raise ConfigError(f"{loc}: expected key=value after ':', got {item!r} in {text!r}")
                settings[last] += "," + item
                continue
            key = key.strip()
            if not key:
                raise ConfigError(f"{loc}: a setting without a name ({item!r}) in {text!r}")
            if key in settings:
                raise ConfigError(f"{loc}.settings.{key}: given twice in {text!r}")
            settings[key], last = value, key
        for key, value in settings.items():
            if not value.strip():
                raise ConfigError(f"{loc}.settings.{key}: no value in {text!r}; give it as {key}=VALUE")
    return m.group("name"), m.group("label"), settings


def _setting_value(system: Any, key: str, raw: str) -> Any:
    """A ``key=value`` string value as the setting's type: text settings keep the text; others are read as a
    YAML scalar (``32`` -> 32, ``0.5`` -> 0.5, ``true`` -> True), then checked by the system's schema."""
    import yaml

    typ = system.settings_schema.get(key, (str, None))[0]
    if typ is str:
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, str | int | float | bool) else raw


def expand_presets(items: list[Any], where: str) -> list[tuple[str, Any]]:
    """[(loc, item)] with each preset (``csm-all``, ``csm-all:key=value``, ``{name: csm-all, settings}``)
    replaced by its labelled systems; settings given with the preset apply to every one of them."""
    from gen3deval.systems.base import SYSTEM_PRESETS

    out: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        loc = f"{where}[{i}]"
        name: Any = None
        extra: dict[str, Any] = {}
        if isinstance(item, str):
            name, label, raw = parse_system_string(item, loc)
            if name in SYSTEM_PRESETS and label:
                raise ConfigError(
                    f"{loc}: {name} is a preset of several labelled systems; it takes no @LABEL"
                )
            extra = dict(raw)
        elif isinstance(item, dict):
            name = item.get("name")
            extra = item.get("settings") or {}
        if not isinstance(name, str) or name not in SYSTEM_PRESETS:
            out.append((loc, item))
            continue
        if not isinstance(extra, dict):
            raise ConfigError(f"{loc}.settings: expected a mapping, got {type(extra).__name__}")
        for j, entry in enumerate(SYSTEM_PRESETS.get(name)()):
            settings = dict(entry["settings"])
            if isinstance(item, str):
                from gen3deval.systems.base import SYSTEMS

                cls = SYSTEMS.get(entry["name"])
                settings.update({k: _setting_value(cls, k, str(v)) for k, v in extra.items()})
            else:
                settings.update(extra)
            out.append((f"{loc}({name}[{j}])", {**entry, "settings": settings}))
    return out


def system_spec(item: Any, loc: str, where: str, base: Path) -> SystemSpec:
    """Validate one system entry (a name, a ``NAME[@LABEL]:key=value`` string, or a mapping)."""
    from gen3deval.systems.base import SYSTEMS

    settings: dict[str, Any] = {}
    label: Any
    if isinstance(item, str):
        name, label, raw_settings = parse_system_string(item, loc)
        if name in SYSTEMS:
            cls = SYSTEMS.get(name)
            settings = {k: _setting_value(cls, k, v) for k, v in raw_settings.items()}
        label = name if label is None else label
    elif isinstance(item, dict):
        extra = set(item) - {"name", "label", "settings"}
        if extra:
            raise ConfigError(f"{loc}.{sorted(extra)[0]}: unknown field; known: name, label, settings")
        raw_name = item.get("name")
        if not isinstance(raw_name, str) or not raw_name:
            raise ConfigError(f"{loc}.name: expected a system name")
        name = raw_name
        label = item.get("label", name)
        settings = item.get("settings") or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{loc}.settings: expected a mapping, got {type(settings).__name__}")
    else:
        raise ConfigError(f"{loc}: expected a system name or a mapping {{name, settings}}, got {item!r}")
    if name not in SYSTEMS:
        raise ConfigError(f"{loc}.name: unknown system {name!r}; known: {', '.join(SYSTEMS.names())}")
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise ConfigError(f"{loc}.label: expected letters, digits, _ . + -, got {label!r}")
    cls = SYSTEMS.get(name)
    missing = [k for k, (_, default) in cls.settings_schema.items() if default is ... and k not in settings]
    if missing:
        form = f"{name}:" + ",".join(f"{k}={'PATH' if k in cls.path_settings else 'VALUE'}" for k in missing)
        hint = (
            f"give it as --system {form}"
            if where == "--system"
            else f"give it as `{form}` or {{name: {name}, settings: {{{missing[0]}: ...}}}}"
        )
        raise ConfigError(
            f"{loc}.settings.{missing[0]}: required setting of system {name!r} is missing; {hint}"
        )
    spec = SystemSpec(name=name, label=label, settings=dict(settings), base_dir=str(base.resolve()))
    # Each system checks its own settings now, so a wrong spec fails before any work.
    cls.validate_settings(spec.settings, f"{loc}.settings", base.resolve())
    return spec
