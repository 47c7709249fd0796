"""API keys: redaction and load_api_key's sources, permissions and errors (real files, real env)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gen3deval.errors import ConfigError
from gen3deval.remote import load_api_key, redact

KEY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"  # 32 alphanumerics, the form of a CSM key
ENV = "GEN3DEVAL_TEST_API_KEY"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_redact_every_form() -> None:
    secret = "k+y/=1 2"
    text = f"a {secret} b {secret} c k%2By%2F%3D1%202 d"
    out = redact(text, [secret, ""])
    assert secret not in out and "k%2By" not in out and out.count("***") == 3
    assert redact("x AB y ABC", ["AB", "ABC"]) == "x *** y ***"  # longest first: no "***C"
    assert redact("nothing here", []) == "nothing here"


def test_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, f"  {KEY}\n")
    cfg = _private(tmp_path / "csm.key", "other")
    assert load_api_key(env_var=ENV, config_file=cfg, interactive=False) == KEY


def test_empty_env_var_falls_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "")
    cfg = _private(tmp_path / "csm.key", KEY + "\n")
    assert load_api_key(env_var=ENV, config_file=cfg, interactive=False) == KEY


def test_config_file_must_be_private(tmp_path: Path) -> None:
    cfg = _private(tmp_path / "csm.key", KEY, mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_api_key(env_var=ENV, config_file=cfg, interactive=False)
    msg = str(info.value)
    assert str(cfg) in msg and "chmod 600" in msg and KEY not in msg
    cfg.chmod(0o640)
    with pytest.raises(ConfigError):
        load_api_key(env_var=ENV, config_file=cfg, interactive=False)


def test_empty_config_file_is_an_error(tmp_path: Path) -> None:
    cfg = _private(tmp_path / "csm.key", "\n")
    with pytest.raises(ConfigError, match="empty"):
        load_api_key(env_var=ENV, config_file=cfg, interactive=False)


@pytest.mark.parametrize(
    "content",
    [
        KEY + "\n",  # the original script's .csm_config: just the key
        json.dumps({"api_key": KEY, "base_url": "https://api.csm.ai"}),
        json.dumps({"apiKey": KEY}),
        f"# csm\n[csm]\nCSM_API_KEY = '{KEY}'\n",
        f"export CSM_API_KEY={KEY}\n",
    ],
)
def test_legacy_file_formats(tmp_path: Path, content: str) -> None:
    legacy = _private(tmp_path / ".csm_config", content)
    got = load_api_key(
        env_var=ENV, config_file=tmp_path / "missing.key", legacy_files=[legacy], interactive=False
    )
    assert got == KEY


def test_legacy_file_without_key_is_skipped(tmp_path: Path) -> None:
    legacy = _private(tmp_path / ".csm_config", json.dumps({"base_url": "x"}))
    with pytest.raises(ConfigError):
        load_api_key(env_var=ENV, config_file=None, legacy_files=[legacy], interactive=False)


def test_no_key_no_terminal_names_env_var_and_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "csm.key"
    with pytest.raises(ConfigError) as info:
        load_api_key(env_var=ENV, config_file=cfg, legacy_files=[tmp_path / ".csm_config"], interactive=False)
    assert ENV in str(info.value) and str(cfg) in str(info.value)
    assert not cfg.exists()


def test_no_key_default_interactivity_under_pytest_is_an_error(tmp_path: Path) -> None:
    # pytest's stdin is not a terminal, so the default must not prompt (a prompt would hang here).
    with pytest.raises(ConfigError):
        load_api_key(env_var=ENV, config_file=tmp_path / "k", ask=lambda _: pytest.fail("prompted"))


def test_interactive_prompt_saves_key_mode_600(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "csm.key"
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return KEY + "\n"

    got = load_api_key(env_var=ENV, config_file=cfg, prompt="CSM API key: ", interactive=True, ask=ask)
    assert got == KEY and prompts == ["CSM API key: "]
    assert cfg.read_text().strip() == KEY
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    # and the next run reads it back without prompting
    assert load_api_key(env_var=ENV, config_file=cfg, interactive=False) == KEY


def test_interactive_empty_answer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=ENV):
        load_api_key(env_var=ENV, config_file=tmp_path / "k", interactive=True, ask=lambda _: "  ")
