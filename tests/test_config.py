"""Run specs and protocol presets: values, overrides, flags, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gen3deval.config import (
    PROTOCOLS,
    build_spec,
    default_jobs,
    get_protocol,
    load_spec_file,
    protocol_from_params,
)
from gen3deval.errors import ConfigError


def test_defaults_with_nothing_given() -> None:
    spec = build_spec({})
    assert spec.suites == ("quickstart",)
    assert [s.name for s in spec.systems] == ["oracle", "bbox", "boxes", "sphere"]
    assert spec.protocol == PROTOCOLS["default"]
    assert spec.out == Path("runs/quickstart")
    assert spec.jobs == default_jobs() >= 1
    assert spec.limit is None and spec.retries == 2


def test_presets_match_the_protocol_document() -> None:
    d = PROTOCOLS["default"]
    assert (d.normalize, d.align, d.samples, d.seed, d.iou_resolution) == ("bbox", "none", 100_000, 0, 128)
    assert d.thresholds == (0.01, 0.02, 0.05)
    assert d.metric_keys() == [
        "chamfer_l1", "chamfer_l2", "chamfer_l2_sum", "hausdorff", "fscore@0.01", "fscore@0.02", "fscore@0.05",
        "normal_consistency", "volume_iou", "mse", "psnr", "ssim", "silhouette_iou",
    ]  # fmt: skip
    assert (d.rig, d.material, d.background) == ("ref", "asset", "white") and d.renders
    c = PROTOCOLS["code3d"]
    assert (c.task, c.language, c.align, c.rig) == ("image-to-threejs", "threejs", "none", "ref")
    assert c.geometry_keys() == [
        "chamfer_l2",
        "fscore@0.01",
        "fscore@0.02",
        "fscore@0.05",
        "normal_consistency",
    ]
    assert c.image_metrics == ("mse", "psnr", "ssim", "silhouette_iou")
    g = PROTOCOLS["gencad"]
    assert (g.task, g.language, g.normalize) == ("image-to-cadquery", "cadquery", "inertia")
    assert "best_iou" in g.metric_keys() and not g.unavailable()
    t = PROTOCOLS["clip3d"]
    assert t.rig == "trellis8" and t.metric_keys() == ["clip_score"]
    assert t.unavailable() and "CLIP metric is not available yet" in t.unavailable()[0]
    assert len({p.params_hash() for p in PROTOCOLS.values()}) == len(PROTOCOLS)


def test_protocol_overrides_and_round_trip() -> None:
    p = get_protocol({"name": "default", "samples": 20000, "thresholds": [0.1], "limits": {"wall_s": 5}})
    assert p.name == "default" and p.samples == 20000 and p.limits.wall_s == 5.0
    assert p.geometry_keys()[4] == "fscore@0.1"
    assert p.params_hash() != PROTOCOLS["default"].params_hash()
    assert protocol_from_params(p.params()) == p
    assert get_protocol("gencad") is PROTOCOLS["gencad"] or get_protocol("gencad") == PROTOCOLS["gencad"]
    assert get_protocol({"name": "default", "rig": None, "image_metrics": []}).renders is False


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("nosuch", "protocol.name: unknown protocol 'nosuch'"),
        ({"name": "default", "colour": 1}, "protocol.colour: unknown protocol field"),
        ({"name": "default", "version": "9"}, "protocol.version"),
        ({"name": "default", "samples": "many"}, "protocol.samples"),
        ({"name": "default", "samples": 10}, "protocol.samples"),
        ({"name": "default", "seed": -1}, "protocol.seed"),
        ({"name": "default", "thresholds": [-0.1]}, "protocol.thresholds"),
        ({"name": "default", "metrics": ["chamfer_l3"]}, "protocol.metrics: unknown metric 'chamfer_l3'"),
        ({"name": "default", "image_metrics": ["lpips"]}, "protocol.image_metrics"),
        ({"name": "default", "rig": "front"}, "protocol.rig: unknown rig 'front'"),
        ({"name": "default", "rig": None}, "protocol.rig: image metrics need"),
        ({"name": "default", "normalize": "unit"}, "protocol.normalize"),
        ({"name": "default", "align": "icp"}, "protocol.align"),
        ({"name": "default", "limits": {"wall_s": -1}}, "protocol.limits.wall_s"),
        ({"name": "default", "limits": {"disk": 1}}, "protocol.limits.disk: unknown limit"),
        (["default"], "protocol: expected a preset name or a mapping"),
    ],
)
def test_protocol_errors_name_the_field(value: object, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        get_protocol(value)  # type: ignore[arg-type]
    assert str(exc.value).startswith(field.split(":")[0]) and field in str(exc.value)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"sytems": ["oracle"]}, "sytems: unknown field"),
        ({"suite": "quickstart", "suites": ["quickstart"]}, "suite: give either"),
        ({"suites": ["quickstart", 3]}, "suites[1]"),
        ({"suites": []}, "suites: expected"),
        ({"systems": []}, "systems: expected a non-empty list"),
        ({"systems": [42]}, "systems[0]: expected a system name"),
        ({"systems": ["oracle", "nosuch"]}, "systems[1].name: unknown system 'nosuch'"),
        ({"systems": [{"name": "oracle", "colour": "red"}]}, "systems[0].colour: unknown field"),
        ({"systems": [{"name": "files"}]}, "systems[0].settings.dir: required setting"),
        (
            {"systems": [{"name": "files", "settings": {"dir": "nope/"}}]},
            "systems[0].settings.dir: folder not found",
        ),
        ({"systems": [{"name": "boxes", "settings": {"n": "many"}}]}, "systems[0].settings.n: expected int"),
        ({"systems": [{"name": "boxes", "settings": {"n": 0}}]}, "systems[0].settings.n"),
        ({"systems": [{"name": "oracle", "settings": {"x": 1}}]}, "systems[0].settings.x: unknown setting"),
        ({"systems": ["oracle", "oracle"]}, "systems[1].label: system label 'oracle' appears twice"),
        ({"systems": [{"name": "oracle", "label": "a b"}]}, "systems[0].label"),
        ({"jobs": 0}, "jobs: expected a positive integer"),
        ({"jobs": "2"}, "jobs"),
        ({"limit": -3}, "limit"),
        ({"retries": 99}, "retries"),
        ({"out": 5}, "out: expected a folder path"),
    ],
)
def test_spec_errors_name_the_field(data: dict[str, object], field: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        build_spec(data, base_dir=tmp_path)
    assert str(exc.value).startswith(field.split(":")[0].split("[")[0]) and field in str(exc.value)


def test_flags_override_the_spec_and_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "outs").mkdir()
    data = {
        "suite": "manifest:data/m.jsonl",
        "systems": ["oracle", {"name": "files", "label": "mine", "settings": {"dir": "outs", "up": "z"}}],
        "protocol": {"name": "code3d", "samples": 5000},
        "out": "runs/x",
        "jobs": 1,
        "limit": 3,
    }
    spec = build_spec(data, base_dir=tmp_path)
    assert spec.suites == (f"manifest:{tmp_path / 'data' / 'm.jsonl'}",)
    assert spec.out == tmp_path / "runs" / "x"
    files = spec.systems[1]
    assert (files.name, files.label) == ("files", "mine") and files.settings == {"dir": "outs", "up": "z"}
    assert files.base_dir == str(tmp_path.resolve())
    assert (
        spec.protocol.name == "code3d" and spec.protocol.samples == 5000 and (spec.jobs, spec.limit) == (1, 3)
    )
    flags = build_spec(
        data,
        base_dir=tmp_path,
        suites=["quickstart"],
        systems=["bbox"],
        protocol="gencad",
        out="o",
        jobs=2,
        limit=1,
    )
    assert flags.suites == ("quickstart",) and [s.name for s in flags.systems] == ["bbox"]
    assert (
        flags.protocol == PROTOCOLS["gencad"]
        and flags.out == Path("o")
        and (flags.jobs, flags.limit) == (2, 1)
    )
    with pytest.raises(ConfigError, match=r"^--system\[0\]\.name: unknown system"):
        build_spec({}, systems=["nosuch"])


def test_spec_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_spec_file(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- oracle\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: a run spec must be a mapping"):
        load_spec_file(listy)
    with pytest.raises(ConfigError, match="run spec not found"):
        load_spec_file(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_spec_file(empty) == {}


def test_fingerprint_records_the_protocol() -> None:
    from gen3deval.engine.build import protocol_fingerprint

    p = PROTOCOLS["default"]
    fp = protocol_fingerprint(p, renderer={"renderer": "test"})
    assert fp["name"] == "default" and fp["version"] == p.version
    assert fp["params"] == p.params() and fp["sandbox"] == p.limits.to_dict()
    assert fp["renderer"] == {"renderer": "test"} and fp["versions"]["numpy"]
    other = protocol_fingerprint(
        get_protocol({"name": "default", "samples": 5000}), renderer={"renderer": "test"}
    )
    assert other["hash"] != fp["hash"]
    assert protocol_fingerprint(p, renderer={"renderer": "test"})["hash"] == fp["hash"]
