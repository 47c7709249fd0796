"""``vlm``: a vision-language model behind any OpenAI-compatible endpoint (OpenRouter, OpenAI, vLLM, Ollama,
llama.cpp's server) writes a Three.js or CadQuery program from the reference image, then revises it.

It is a remote system (:mod:`gen3deval.systems.remote`): the engine runs its requests concurrently in the
engine process, stores each answer (the job's handle) the moment it arrives, and never asks again for a stored
attempt. ``attempts`` = k is a fixed budget: attempt 1 sees the reference image; attempt i+1 sees the image,
attempt i's program verbatim and feedback (its error class and message, or its render beside the reference)
and is asked for a complete revised program (:mod:`gen3deval.prompts`). All k attempts always run.

Settings: ``model`` (required), ``base_url`` (else ``$OPENAI_BASE_URL``, else https://api.openai.com/v1),
``api_key_env`` (``OPENAI_API_KEY``; ``""`` for local servers without a key), ``language`` (``threejs`` |
``cadquery``), ``attempts``, ``temperature`` (0), ``top_p``, ``max_tokens``, ``seed``, ``extra_body`` (a
mapping, or its JSON/YAML text on the command line), ``prompt`` (a built-in template name or a template file;
default: the language's), and how requests are sent (not part of an answer's key): ``timeout_s``,
``concurrency``, ``rps``, ``retries``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from gen3deval.errors import ConfigError
from gen3deval.remote.policy import RemotePolicy
from gen3deval.suites.base import Case
from gen3deval.systems.remote import Fetched, RemoteSystem

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV = "OPENAI_BASE_URL"
LANGUAGES = ("threejs", "cadquery")


class _Answered:
    """The poll of a chat answer: done at once (the answer came with the request)."""

    status = "done"
    message: str | None = None

    def __init__(self, handle: dict[str, Any]) -> None:
        self.handle = handle
        self.cost = (handle.get("answer") or {}).get("cost")


class VlmSystem(RemoteSystem):
    name = "vlm"
    description = (
        "a vision-language model writing Three.js/CadQuery programs (any OpenAI-compatible endpoint)"
    )
    service = "openai-compatible"
    output = "program"
    revises = True
    polls = False  # the answer comes with the request: no polling
    settings_schema: ClassVar[dict[str, tuple[Any, Any]]] = {
        "model": (str, ...),
        "base_url": (str, ""),
        "api_key_env": (str, "OPENAI_API_KEY"),
        "language": (str, "threejs"),
        "attempts": (int, 1),
        "temperature": (float, 0.0),
        "top_p": (float, None),
        "max_tokens": (int, None),
        "seed": (int, None),
        "extra_body": (object, None),
        "prompt": (str, ""),
        "timeout_s": (float, 120.0),
        "concurrency": (int, 8),
        "rps": (float, 5.0),
        "retries": (int, 3),
    }
    operational_settings = ("api_key_env", "timeout_s", "concurrency", "rps", "retries")

    def __init__(self, settings: dict[str, Any] | None = None, *, base_dir: str | Path = ".") -> None:
        super().__init__(settings, base_dir=base_dir)
        self._key: str | None = None
        self._loaded = False
        self._template: Any = None

    @classmethod
    def check_settings(cls, settings: dict[str, Any], where: str) -> None:
        if settings["language"] not in LANGUAGES:
            raise ConfigError(
                f"{where}.language: expected one of {', '.join(LANGUAGES)}, got {settings['language']!r}"
            )
        if settings["attempts"] < 1:
            raise ConfigError(f"{where}.attempts: expected at least 1, got {settings['attempts']}")
        extra = settings["extra_body"]
        if isinstance(extra, str):
            import yaml

            try:
                extra = yaml.safe_load(extra)
            except yaml.YAMLError:
                extra = None
            if not isinstance(extra, dict):
                raise ConfigError(
                    f"{where}.extra_body: expected a mapping (JSON or YAML), got {settings['extra_body']!r}"
                )
            settings["extra_body"] = extra
        elif extra is not None and not isinstance(extra, dict):
            raise ConfigError(f"{where}.extra_body: expected a mapping, got {extra!r}")
        url = settings["base_url"]
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: expected an http(s) URL, got {url!r}")
        try:
            cls.policy_of(settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None

    @staticmethod
    def policy_of(settings: dict[str, Any]) -> RemotePolicy:
        return RemotePolicy.from_settings(
            {
                "concurrency": settings["concurrency"],
                "rps": settings["rps"],
                "retries": settings["retries"],
                "request_timeout_s": settings["timeout_s"],
            }
        )

    def policy(self) -> RemotePolicy:
        return self.policy_of(self.settings)

    def base_url(self) -> str:
        return (
            self.settings["base_url"] or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
        ).rstrip("/")

    def template(self) -> Any:
        if self._template is None:
            from gen3deval.prompts import load_template

            self._template = load_template(
                self.settings["prompt"] or self.settings["language"], self.base_dir
            )
        return self._template

    def fingerprint_models(self) -> dict[str, Any]:
        """What the protocol fingerprint records of this system: the model and its prompt's version."""
        return {
            "model": self.settings["model"],
            "prompt": self.template().name,
            "prompt_version": self.template().version,
        }

    # -- planning hooks ---------------------------------------------------------------------------------
    def attempts(self, case: Case) -> int:
        return int(self.settings["attempts"])

    def input_fingerprint(self, case: Case, attempt: int) -> str:
        # The template's version: a changed prompt asks the model again.
        return f"prompt:{self.template().version}"

    def secret_env(self) -> tuple[str, ...]:
        return (self.settings["api_key_env"],) if self.settings["api_key_env"] else ()

    def credentials(self) -> None:
        if self._loaded:
            return
        env = self.settings["api_key_env"]
        if env:
            key = os.environ.get(env, "").strip()
            if not key:
                raise ConfigError(
                    f"no API key for {self.base_url()}: set the environment variable {env} "
                    "(or api_key_env= for a local server that needs none)"
                )
            self._key = key
        self._loaded = True

    def preflight(self, cases: list[Case]) -> list[str]:
        """The key, the template, and one free request (``GET /models``): an unreachable endpoint, a refused
        key or an unknown model stop the run here, before anything is spent."""
        import asyncio

        self.credentials()
        self.template()

        async def check() -> None:
            client = self.open_client()
            try:
                await client.check(self.settings["model"])
            finally:
                await client.aclose()

        asyncio.run(check())
        return []

    def open_client(self) -> Any:
        from gen3deval.systems._openai_api import ChatClient

        self.credentials()
        return ChatClient(base_url=self.base_url(), api_key=self._key, policy=self.policy())

    # -- the job ------------------------------------------------------------------------------------------
    async def submit(
        self,
        client: Any,
        case: Case,
        attempt: int,
        asset_id: str | None,
        feedback: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        import asyncio

        from gen3deval.systems.answers import attempt_messages

        if case.image is None:
            raise ConfigError(f"case {case.id!r}: no reference image to show the model")
        t = self.template()
        image = Path(case.image)
        messages = await asyncio.to_thread(attempt_messages, t, image, attempt, feedback)
        s = self.settings
        answer = await client.chat(
            model=s["model"],
            messages=messages,
            temperature=s["temperature"],
            top_p=s["top_p"],
            max_tokens=s["max_tokens"],
            seed=s["seed"],
            extra_body=s["extra_body"],
        )
        from gen3deval.engine.artifacts import content_digest

        image_hash = await asyncio.to_thread(content_digest, image)
        return {
            "answer": answer.to_dict(),
            "model": s["model"],
            "prompt": t.version,
            "attempt": attempt,
            "image": image_hash,  # the reference image shown (the same for every model)
        }

    async def poll(self, client: Any, handle: dict[str, Any]) -> Any:
        return _Answered(handle)

    async def fetch(self, client: Any, answer: Any, dest: Path) -> Fetched:
        from gen3deval.systems.answers import classify

        a = answer.handle.get("answer") or {}
        text = str(a.get("text") or "")
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / "answer.md"
        path.write_text(text, encoding="utf-8")
        info = {
            k: a.get(k) for k in ("model", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s")
        }
        info["prompt"] = answer.handle.get("prompt")
        info["image_sha256"] = answer.handle.get("image")
        language = self.settings["language"]
        program, failure = classify(
            text, language, finish_reason=a.get("finish_reason"), refusal=a.get("refusal")
        )
        return Fetched(program=program, language=language, answer=str(path), failure=failure, info=info)
