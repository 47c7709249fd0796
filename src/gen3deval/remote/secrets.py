"""API keys: loading them (env var, 0600 config file, legacy file, interactive prompt) and redacting them.

A key is never printed or logged; every message the remote layer builds goes through :func:`redact`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from gen3deval.errors import ConfigError

log = logging.getLogger(__name__)

MASK = "***"
# Names under which a legacy file (JSON object or KEY=VALUE lines) may hold the key, in order of preference.
_LEGACY_NAMES = ("api_key", "csm_api_key", "apikey", "x-api-key", "key")
_BARE_TOKEN = re.compile(r"^[A-Za-z0-9_\-.]{8,}$")


def _variants(secret: str) -> set[str]:
    """The forms a secret may take in a message: as is, URL-quoted, JSON-escaped."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every (non-empty) secret, also URL-quoted or JSON-escaped, replaced by ``***``."""
    forms = {v for s in secrets if s for v in _variants(s) if v}
    # Longest first, so a secret that contains another one is masked whole.
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: API key file is readable by group/others (mode {mode:04o}); run `chmod 600 {path}`"
        )


def _key_from_legacy(path: Path) -> str | None:
    """The key in a legacy file such as the original CSM script's ``.csm_config``.

    Accepted forms: a JSON object with one of the keys ``api_key``, ``csm_api_key``, ``apiKey``, ``x-api-key``,
    ``key`` (any case); ``NAME=VALUE`` / ``NAME: VALUE`` lines with one of those names (INI sections and ``#``
    comments ignored); else the first line that is one bare token (the original script writes just the key).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the API key file ({type(exc).__name__})") from None
    with contextlib.suppress(ValueError):
        obj = json.loads(text)
        if isinstance(obj, dict):
            lowered = {str(k).lower(): v for k, v in obj.items()}
            for name in _LEGACY_NAMES:
                value = lowered.get(name)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            return None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        m = re.match(r"^(?:export\s+)?([A-Za-z_][\w\-]*)\s*[=:]\s*(.*)$", line)
        if m:
            name, value = m.group(1).lower(), m.group(2).strip().strip("'\"")
            if value and (name in _LEGACY_NAMES or name.endswith("api_key")):
                return value
            continue
        if _BARE_TOKEN.match(line):
            return line
    return None


def _write_private(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the file may have existed with a wider mode
        os.write(fd, (key + "\n").encode())
    finally:
        os.close(fd)


def load_api_key(
    *,
    env_var: str,
    config_file: Path | None,
    legacy_files: Sequence[Path] = (),
    prompt: str | None = None,
    interactive: bool | None = None,
    ask: Callable[[str], str] = getpass.getpass,
) -> str:
    """The API key, from the first source that has one.

    1. the environment variable ``env_var`` (non-empty);
    2. ``config_file`` if it exists: it must be mode 0600 (else :class:`ConfigError` naming it and ``chmod 600``);
    3. each of ``legacy_files`` that exists (see :func:`_key_from_legacy` for the formats read);
    4. only when ``interactive`` (default: stdin is a terminal): ``ask(prompt)`` (getpass, no echo); the key is then
       written to ``config_file`` with mode 0600 for the next run.

    No key and no terminal: :class:`ConfigError` naming the variable and the config file, before any work.
    """
    value = os.environ.get(env_var, "").strip()
    if value:
        return value
    if config_file is not None and config_file.exists():
        _check_private(config_file)
        try:
            value = config_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_file}: cannot read the API key file ({type(exc).__name__})") from None
        if not value:
            raise ConfigError(
                f"{config_file}: the API key file is empty; set {env_var} or write the key there"
            )
        return value
    for legacy in legacy_files:
        if legacy.is_file():
            key = _key_from_legacy(legacy)
            if key:
                if stat.S_IMODE(legacy.stat().st_mode) & 0o077:
                    log.warning(
                        "%s holds an API key and is readable by group/others; run `chmod 600 %s`",
                        legacy,
                        legacy,
                    )
                return key
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    where = f" or write it to {config_file} (mode 0600)" if config_file is not None else ""
    if not interactive:
        raise ConfigError(f"no API key: set the environment variable {env_var}{where}")
    value = ask(prompt or f"{env_var}: ").strip()
    if not value:
        raise ConfigError(f"no API key entered: set the environment variable {env_var}{where}")
    if config_file is not None:
        _write_private(config_file, value)
        log.info("API key saved to %s (mode 0600)", config_file)
    return value
