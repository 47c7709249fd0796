"""``gen3deval list [WHAT]``: suite kinds, systems, protocols, metrics and camera rigs."""

from __future__ import annotations

import argparse

HELP = "list suite kinds, systems, protocols, metrics and rigs"

WHAT = ("suites", "systems", "protocols", "metrics", "rigs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=WHAT, help="one section only (default: all)")


def _suites() -> list[str]:
    from gen3deval.suites import SUITE_KIND_HELP

    return [f"  {line}" for line in SUITE_KIND_HELP.values()]


def _systems() -> list[str]:
    from gen3deval.systems.base import SYSTEMS

    lines = []
    for name in SYSTEMS.names():
        cls = SYSTEMS.get(name)
        settings = ", ".join(
            f"{k}" + ("" if d is ... else f"={d}") for k, (_t, d) in cls.settings_schema.items()
        )
        lines.append(f"  {name:<10} {cls.description}" + (f"  [settings: {settings}]" if settings else ""))
    from gen3deval.systems.base import SYSTEM_PRESETS

    for name in SYSTEM_PRESETS.names():
        labels = ", ".join(str(e["label"]) for e in SYSTEM_PRESETS.get(name)())
        lines.append(f"  {name:<10} preset: {labels}  (NAME:key=value sets it on each)")
    return lines


def _protocols() -> list[str]:
    from gen3deval.config import PROTOCOLS

    lines = []
    for name, p in PROTOCOLS.items():
        note = "  (not runnable yet: " + "; ".join(p.unavailable()) + ")" if p.unavailable() else ""
        lines.append(
            f"  {name:<10} v{p.version} task {p.task}, normalize {p.normalize}, align {p.align}, "
            f"rig {p.rig}, metrics {', '.join(p.metric_keys())}{note}"
        )
    return lines


def _metrics() -> list[str]:
    from gen3deval.config import UNAVAILABLE_METRICS
    from gen3deval.metrics.base import known_metric_keys, metric_info

    lines = []
    for key in known_metric_keys():
        info = metric_info(key)
        arrow = "higher is better" if info.higher_is_better else "lower is better"
        model = f" [model {info.model}: needs the 'clip' extra]" if info.model else ""
        lines.append(f"  {key:<20} {info.display:<14} {arrow}; {info.description}{model}")
    lines.append("  fscore@T             F@(100 T)      any threshold T > 0")
    for key, why in UNAVAILABLE_METRICS.items():
        lines.append(f"  {key:<20} (unavailable) {why}")
    return lines


def _rigs() -> list[str]:
    from gen3deval.render.cameras import rig

    lines = []
    for name in ("ref", "trellis8", "turntable:N"):
        cams = rig("turntable:4" if name == "turntable:N" else name)
        c = cams[0]
        views = "N views" if name == "turntable:N" else f"{len(cams)} views"
        lines.append(
            f"  {name:<12} {views}, pitch {c.pitch_deg:g}, radius {c.radius:g}, fov {c.fov_deg:g}, "
            f"{c.width}x{c.height}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    sections = {
        "suites": ("suite kinds (--suite KIND:PATH)", _suites),
        "systems": ("systems (--system NAME)", _systems),
        "protocols": ("protocols (--protocol NAME)", _protocols),
        "metrics": ("metrics", _metrics),
        "rigs": ("camera rigs", _rigs),
    }
    for what in [args.what] if args.what else WHAT:
        title, fn = sections[what]
        print(f"{title}:")
        for line in fn():
            print(line)
    return 0
