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
    assert c.image_metrics == ("mse", "psnr", "ssim", "silhouette_iou", "lpips", "clip_image_sim")
    assert c.learned() == {"lpips": "lpips", "clip_image_sim": "clip"} and c.version == "3"
    g = PROTOCOLS["gencad"]
    assert (g.task, g.language, g.normalize) == ("image-to-cadquery", "cadquery", "inertia")
    assert "best_iou" in g.metric_keys() and not g.unavailable()
    assert "mecagent_iou" in g.metric_keys() and g.version == "3"  # the compat IoU, reported apart
    t = PROTOCOLS["clip3d"]
    assert t.rig == "trellis8" and t.metric_keys() == ["clip_score"] and t.reference_free() == ["clip_score"]
    assert not t.unavailable() and t.clip_model_id() == "openai/clip-vit-base-patch32"
    ph = PROTOCOLS["photo3d"]
    assert ph.metric_keys() == ["clip_image_to_3d"] and ph.rig == "trellis8" and ph.version == "3"
    assert d.learned() == {} and not d.reference_free()  # the default protocol needs no model
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
        ({"name": "default", "image_metrics": ["fid"]}, "protocol.image_metrics"),
        ({"name": "default", "metrics": ["lpips"]}, "protocol.metrics: 'lpips' compares"),
        ({"name": "default", "rig": None, "image_metrics": [], "metrics": ["clip_score"]}, "protocol.rig"),
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


def test_fingerprint_records_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    from gen3deval.engine.build import protocol_fingerprint

    monkeypatch.delenv("GEN3DEVAL_SANDBOX", raising=False)
    p = PROTOCOLS["default"]
    fp = protocol_fingerprint(p, renderer={"renderer": "test"})
    assert fp["name"] == "default" and fp["version"] == p.version
    assert fp["params"] == p.params()
    isolation = {"filesystem": True, "cgroup": True, "seccomp": True, "work_mb": 64}
    assert fp["sandbox"] == {**p.limits.to_dict(), "isolation": isolation}
    # runs under another isolation level are not comparable (issue 9): a program may read files under basic
    monkeypatch.setenv("GEN3DEVAL_SANDBOX", "basic")
    assert protocol_fingerprint(p, renderer={"renderer": "test"})["hash"] != fp["hash"]
    monkeypatch.delenv("GEN3DEVAL_SANDBOX")
    assert fp["renderer"] == {"renderer": "test"} and fp["versions"]["numpy"]
    other = protocol_fingerprint(
        get_protocol({"name": "default", "samples": 5000}), renderer={"renderer": "test"}
    )
    assert other["hash"] != fp["hash"]
    assert protocol_fingerprint(p, renderer={"renderer": "test"})["hash"] == fp["hash"]
    # the hash covers the renderer (issue 8, item 7: a mutation dropping it from the hash went unnoticed)
    for renderer in ({"renderer": "test2"}, {"renderer": "test", "gl": "llvmpipe"}, {}):
        assert protocol_fingerprint(p, renderer=renderer)["hash"] != fp["hash"], renderer
    from gen3deval.protocol import fingerprint

    base = fingerprint({"samples": 1}, renderer={"backend": "gl", "gl_renderer": "llvmpipe (LLVM 15)"})
    moved = fingerprint({"samples": 1}, renderer={"backend": "gl", "gl_renderer": "NVIDIA H100"})
    assert base["hash"] != moved["hash"] and base["params"] == moved["params"]


# --- systems as NAME[@LABEL][:key=value,...] strings (issue 8, item 8) -------------------------------------


def test_system_strings_on_the_command_line_and_in_a_spec(tmp_path: Path) -> None:
    (tmp_path / "outs").mkdir()
    (tmp_path / "a,b").mkdir()
    outs = str(tmp_path / "outs")
    spec = build_spec(
        {},
        systems=["oracle", f"files:dir={outs},up=z", f"files@mine:dir={tmp_path / 'a,b'}", "boxes:n=8"],
    )
    assert [(s.name, s.label) for s in spec.systems] == [
        ("oracle", "oracle"),
        ("files", "files"),
        ("files", "mine"),
        ("boxes", "boxes"),
    ]
    assert spec.systems[1].settings == {"dir": outs, "up": "z"}
    assert spec.systems[2].settings == {"dir": str(tmp_path / "a,b")}  # a comma inside a value
    assert spec.systems[3].settings == {"n": 8}  # read as a YAML scalar, checked against the schema
    # The same string in a spec file: relative paths against the spec's folder.
    in_file = build_spec({"systems": ["files@x:dir=outs"]}, base_dir=tmp_path)
    assert in_file.systems[0].settings == {"dir": "outs"} and in_file.systems[0].base_dir == str(tmp_path)
    # Text settings stay text even when they look like numbers; others are checked as their type.
    (tmp_path / "2024").mkdir()
    assert build_spec({"systems": ["files:dir=2024"]}, base_dir=tmp_path).systems[0].settings == {
        "dir": "2024"
    }
    with pytest.raises(ConfigError, match=r"^--system\[0\]\.settings\.n: expected int, got 'many'"):
        build_spec({}, systems=["boxes:n=many"])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "files",
            "--system[0].settings.dir: required setting of system 'files' is missing; "
            "give it as --system files:dir=PATH",
        ),
        (
            "files:up=z",
            "--system[0].settings.dir: required setting of system 'files' is missing; "
            "give it as --system files:dir=PATH",
        ),
        ("files:", "--system[0]: nothing after ':'"),
        ("files:dir", "--system[0]: expected key=value after ':'"),
        ("files:dir=", "--system[0].settings.dir: no value"),
        ("files:dir=a,dir=b", "--system[0].settings.dir: given twice"),
        ("files:=x", "--system[0]: a setting without a name"),
        ("files@bad label:dir=x", "--system[0].label: expected letters"),
        ("nosuch:x=1", "--system[0].name: unknown system 'nosuch'"),
        ("oracle:colour=red", "--system[0].settings.colour: unknown setting of system 'oracle'"),
    ],
)
def test_system_string_errors_show_the_form(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_spec({}, systems=[item])
    assert str(exc.value).startswith(message), str(exc.value)


def test_missing_setting_in_a_spec_shows_both_forms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        build_spec({"systems": ["oracle", {"name": "files"}]}, base_dir=tmp_path)
    assert str(exc.value) == (
        "systems[1].settings.dir: required setting of system 'files' is missing; "
        "give it as `files:dir=PATH` or {name: files, settings: {dir: ...}}"
    )
    with pytest.raises(ConfigError, match=r"^systems\[1\]\.label: system label 'files' appears twice"):
        build_spec({"systems": ["files:dir=.", "files:dir=."]}, base_dir=tmp_path)


# --- suite options and the seeded limit sample (issue 8, item 13) -------------------------------------------


def test_suite_mappings_carry_options_to_the_loader(tmp_path: Path) -> None:
    import json

    import trimesh

    from gen3deval.engine.build import load_cases

    (tmp_path / "data").mkdir()
    trimesh.creation.box().export(tmp_path / "data" / "box.obj")
    rows = [
        {"id": f"{cat}{i}", "category": cat, "path": "box.obj"} for cat in ("tool", "food") for i in range(5)
    ]
    (tmp_path / "data" / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = {
        "suites": [
            {"spec": "manifest:data/m.jsonl", "categories": ["tool"], "up": "z", "limit": 2},
        ],
        "seed": 7,
    }
    spec = build_spec(data, base_dir=tmp_path)
    entry = spec.suites[0]
    assert entry == {
        "spec": f"manifest:{tmp_path / 'data' / 'm.jsonl'}",
        "categories": ["tool"],
        "up": "z",
        "limit": 2,
    }
    assert spec.seed == 7 and spec.to_dict()["seed"] == 7 and spec.to_dict()["suites"] == [entry]
    entries, suites = load_cases(spec.suites, spec.limit, spec.seed)
    assert len(entries) == 2 and {e.case.category for e in entries} == {"tool"}
    assert all(e.case.meta["up"] == "z" for e in entries)  # OBJ references follow the suite's `up`
    assert suites[0]["options"] == {"limit": 2, "seed": 7, "categories": ["tool"], "up": "z"}
    # A global limit is a stratified sample of each suite: both categories, not the first lines.
    both, _ = load_cases([f"manifest:{tmp_path / 'data' / 'm.jsonl'}"], 2, 0)
    assert {e.case.category for e in both} == {"tool", "food"}
    # A comma-separated string of categories is a list.
    one = build_spec(
        {"suite": {"spec": "manifest:data/m.jsonl", "categories": "tool, food"}}, base_dir=tmp_path
    )
    assert one.suites[0]["categories"] == ["tool", "food"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("suite", "message"),
    [
        ({"categories": ["a"]}, "suites[0].spec: missing"),
        ({"spec": 3}, "suites[0].spec: expected a suite spec string"),
        ({"spec": "manifest:m.jsonl", "captions": "c.csv"}, "suites[0].captions: 'captions' does not apply"),
        ({"spec": "manifest:m.jsonl", "colour": "red"}, "suites[0].colour: 'colour' does not apply"),
        ({"spec": "manifest:m.jsonl", "up": "x"}, "suites[0].up: up='x' is invalid"),
        ({"spec": "manifest:m.jsonl", "limit": 0}, "suites[0].limit: limit=0 is invalid"),
        ({"spec": "images:d", "up": "z"}, "suites[0].up: 'up' does not apply to suite kind 'images'"),
        ({"spec": "nosuch:x"}, "suites[0].spec: suite spec 'nosuch:x': unknown suite kind"),
    ],
)
def test_suite_option_errors_name_the_field(suite: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        build_spec({"suites": [suite]}, base_dir=tmp_path)
    assert str(exc.value).startswith(message), str(exc.value)


def test_meshes_captions_option_resolves_against_the_spec_folder(tmp_path: Path) -> None:
    spec = build_spec({"suite": {"spec": "meshes:objs", "captions": "caps.csv"}}, base_dir=tmp_path)
    assert spec.suites[0] == {
        "spec": f"meshes:{tmp_path / 'objs'}",
        "captions": str(tmp_path / "caps.csv"),
    }


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, None])
def test_seed_must_be_a_non_negative_integer(seed: object) -> None:
    with pytest.raises(ConfigError, match=r"^seed: expected an integer >= 0"):
        build_spec({"seed": seed})


def test_executor_and_shard_fields(tmp_path: Path) -> None:
    from gen3deval.config import parse_shard

    spec = build_spec({"executor": "ray", "ray_shared_dir": str(tmp_path)}, shard="2/3", default_out="runs/x")
    assert spec.executor == "ray" and spec.shard == (2, 3)
    # The run folder goes inside the shared folder, and each shard gets its own.
    assert spec.out == tmp_path / "runs" / "x" / "shard-2-of-3"
    assert spec.to_dict()["shard"] == "2/3" and spec.to_dict()["executor"] == "ray"
    assert "executor" not in build_spec({}).to_dict()  # the default changes no stored spec
    assert build_spec({"out": "mine"}, shard="1/2").out.name == "mine"  # an explicit folder is kept
    assert parse_shard(None) is None and parse_shard("8/8") == (8, 8)
    for bad in ("0/3", "4/3", "1", "a/b", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match="shard: expected I/N"):
            parse_shard(bad)
    with pytest.raises(ConfigError, match="executor: expected one of local, ray"):
        build_spec({"executor": "dask"})
    with pytest.raises(ConfigError, match="ray_address: only applies with executor: ray"):
        build_spec({"ray_address": "auto"})
