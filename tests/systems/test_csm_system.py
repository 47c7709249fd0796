"""The ``csm`` system's settings, the ``csm-all`` preset and its key handling (no network here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gen3deval.config import build_spec
from gen3deval.errors import ConfigError
from gen3deval.suites.base import Case
from gen3deval.systems.base import create_system
from gen3deval.systems.csm import CSM_CONFIGS


def test_csm_all_expands_to_the_six_labelled_configurations() -> None:
    spec = build_spec(suites=["quickstart"], systems=["csm-all"])
    assert [s.label for s in spec.systems] == list(CSM_CONFIGS)
    for s in spec.systems:
        assert s.name == "csm"
        assert {k: s.settings[k] for k in CSM_CONFIGS[s.label]} == CSM_CONFIGS[s.label]
        assert s.settings["resolution"] == 200_000


def test_preset_settings_apply_to_each_and_type_check() -> None:
    spec = build_spec(suites=["quickstart"], systems=["csm-all:concurrency=4,poll_interval=2.5"])
    assert {s.settings["concurrency"] for s in spec.systems} == {4}
    assert {s.settings["poll_interval"] for s in spec.systems} == {2.5}
    with pytest.raises(ConfigError, match="concurrency"):
        build_spec(suites=["quickstart"], systems=["csm-all:concurrency=many"])
    with pytest.raises(ConfigError, match="no @LABEL"):
        build_spec(suites=["quickstart"], systems=["csm-all@mine"])
    mapping = build_spec({"systems": [{"name": "csm-all", "settings": {"rps": 1}}]}, suites=["quickstart"])
    assert len(mapping.systems) == 6 and {s.settings["rps"] for s in mapping.systems} == {1}


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("job_type=image_to_video", "job_type: expected one of"),
        ("texture_model=shiny", "texture_model"),
        ("poll_interval=0", "poll_interval"),
        ("base_url=ftp://x", "base_url"),
        ("resolution=0", "resolution"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(setting: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_spec(suites=["quickstart"], systems=[f"csm:{setting}"])


def test_operational_settings_are_named_and_policy_follows_them() -> None:
    sys_obj = create_system("csm", {"concurrency": 3, "poll_interval": 90.0, "timeout_min": 5.0})
    policy = sys_obj.policy()
    assert (policy.concurrency, policy.poll_interval_s, policy.timeout_min) == (3, 90.0, 5.0)
    assert policy.poll_max_s >= policy.poll_interval_s  # an interval above poll_max raises the cap
    ops = set(sys_obj.operational_settings)
    assert {"concurrency", "rps", "retries", "poll_interval", "timeout_min", "api_key_env"} <= ops
    assert not ops & {"job_type", "geometry_model", "texture_model", "resolution", "prompt", "base_url"}


def test_no_key_and_no_terminal_is_a_clear_error_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CSM_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    sys_obj = create_system("csm", {})
    with pytest.raises(ConfigError, match="CSM_API_KEY"):
        sys_obj.preflight([Case(id="a", image=str(tmp_path / "a.png"))])
    monkeypatch.setenv("MY_CSM", "k-123")
    other = create_system("csm", {"api_key_env": "MY_CSM"})
    other.preflight([Case(id="a", image=str(tmp_path / "a.png"))])
    assert other.secret_env() == ("MY_CSM",)
    assert "k-123" not in repr(other.settings)
