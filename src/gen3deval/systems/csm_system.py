"""The ``csm`` system (CSM.ai image-to-3D, kit and chat-to-3D jobs) and the ``csm-all`` preset.

The client is :class:`gen3deval.systems.csm.CsmClient`; the engine drives submit / poll / fetch
(:mod:`gen3deval.systems.remote`). Settings:

- what the server makes (part of the ``generate`` key): ``job_type`` (``image_to_3d``, ``image_to_kit``,
  ``chat_to_3d``), ``geometry_model``, ``texture_model``, ``resolution``, ``decomposition_model`` (kit),
  ``prompt`` (chat), ``base_url`` (else ``$CSM_BASE_URL``, else the public API);
- how we talk to it (not in the key): ``concurrency``, ``rps``, ``retries``, ``poll_interval`` (s, grows to
  ``poll_max``), ``timeout_min``, ``request_timeout`` (s), ``backoff`` (s), ``api_key_env`` (the variable
  holding the key; default ``CSM_API_KEY``, else the key file, see :func:`load_csm_key`).

The key is read once in the engine process (``credentials``) and lives only in the client's headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from gen3deval.errors import ConfigError
from gen3deval.remote.policy import RemotePolicy
from gen3deval.suites.base import Case
from gen3deval.systems.remote import Fetched, RemoteSystem

_OPERATIONAL = {
    # setting -> RemotePolicy field
    "concurrency": "concurrency",
    "rps": "rps",
    "retries": "retries",
    "poll_interval": "poll_interval_s",
    "poll_max": "poll_max_s",
    "timeout_min": "timeout_min",
    "request_timeout": "request_timeout_s",
    "backoff": "backoff_s",
}
_CHOICES = {
    "job_type": ("image_to_3d", "image_to_kit", "chat_to_3d"),
    "geometry_model": ("base", "turbo"),
    "texture_model": ("none", "baked", "pbr"),
    "decomposition_model": ("pro",),
}


class CsmSystem(RemoteSystem):
    name = "csm"
    description = "CSM.ai hosted image-to-3D (v3 sessions API): image_to_3d, image_to_kit, chat_to_3d"
    service = "csm"
    settings_schema: ClassVar[dict[str, tuple[Any, Any]]] = {
        "job_type": (str, "image_to_3d"),
        "geometry_model": (str, "turbo"),
        "texture_model": (str, "none"),
        "resolution": (int, 200_000),
        "decomposition_model": (str, "pro"),
        "prompt": (str, ""),
        "base_url": (str, ""),
        "api_key_env": (str, "CSM_API_KEY"),
        "concurrency": (int, 8),
        "rps": (float, 5.0),
        "retries": (int, 3),
        "poll_interval": (float, 10.0),
        "poll_max": (float, 60.0),
        "timeout_min": (float, 90.0),
        "request_timeout": (float, 60.0),
        "backoff": (float, 2.0),
    }
    operational_settings = (*_OPERATIONAL, "api_key_env")

    def __init__(self, settings: dict[str, Any] | None = None, *, base_dir: str | Path = ".") -> None:
        super().__init__(settings, base_dir=base_dir)
        self._key: str | None = None

    @classmethod
    def check_settings(cls, settings: dict[str, Any], where: str) -> None:
        for key, choices in _CHOICES.items():
            if settings[key] not in choices:
                raise ConfigError(
                    f"{where}.{key}: expected one of {', '.join(choices)}, got {settings[key]!r}"
                )
        if settings["resolution"] < 1:
            raise ConfigError(f"{where}.resolution: expected a positive number of faces")
        if settings["base_url"]:
            from gen3deval.systems.csm import resolve_base_url

            try:
                resolve_base_url(settings["base_url"])
            except ConfigError as exc:
                raise ConfigError(f"{where}.{exc}") from None
        try:
            cls.policy_of(settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None

    @staticmethod
    def policy_of(settings: dict[str, Any]) -> RemotePolicy:
        fields = {field: settings[key] for key, field in _OPERATIONAL.items() if key in settings}
        fields["poll_max_s"] = max(fields.get("poll_max_s", 60.0), fields.get("poll_interval_s", 10.0))
        fields["backoff_max_s"] = max(30.0, fields.get("backoff_s", 2.0))
        return RemotePolicy.from_settings(fields)

    def policy(self) -> RemotePolicy:
        return self.policy_of(self.settings)

    def base_url(self) -> str:
        from gen3deval.systems.csm import resolve_base_url

        return resolve_base_url(self.settings["base_url"] or None)

    # -- engine hooks -----------------------------------------------------------------------------------
    def preflight(self, cases: list[Case]) -> list[str]:
        # The key now, before any work (a prompt, or a clear error without a terminal). Cases without a photo
        # (mesh suites) send the reference rendered by the reference stage, as image-conditioned systems see it.
        self.credentials()
        return []

    def credentials(self) -> None:
        if self._key:
            return
        from gen3deval.remote.secrets import load_api_key
        from gen3deval.systems.csm import KEY_FILE, LEGACY_KEY_FILE

        env_var = self.settings["api_key_env"]
        self._key = load_api_key(
            env_var=env_var,
            config_file=KEY_FILE.expanduser(),
            legacy_files=(Path.cwd() / LEGACY_KEY_FILE,),
            prompt="CSM.ai API key: ",
        )

    def secret_env(self) -> tuple[str, ...]:
        return (str(self.settings["api_key_env"]),)

    def asset_key(self, case: Case) -> str | None:
        if case.image is None:
            return None
        from gen3deval.config import stable_hash
        from gen3deval.engine.artifacts import content_digest

        return stable_hash([self.service, self.base_url(), content_digest(case.image)])

    def open_client(self) -> Any:
        from gen3deval.systems.csm import CsmClient

        self.credentials()
        assert self._key is not None
        return CsmClient(api_key=self._key, base_url=self.base_url(), policy=self.policy())

    def _api_settings(self) -> dict[str, Any]:
        s = self.settings
        out = {k: s[k] for k in ("geometry_model", "texture_model", "resolution")}
        if s["job_type"] == "image_to_kit":
            out["decomposition_model"] = s["decomposition_model"]
        if s["job_type"] == "chat_to_3d" and s["prompt"]:
            out["prompt"] = s["prompt"]
        return out

    async def submit(
        self,
        client: Any,
        case: Case,
        attempt: int,
        asset_id: str | None,
        feedback: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if case.image is None:
            raise ConfigError(f"case {case.id!r}: no input image")
        return dict(
            await client.submit(
                self.settings["job_type"],
                case.image,
                self._api_settings(),
                asset_id=asset_id,
                prompt=self.settings["prompt"] or None,
            )
        )

    async def poll(self, client: Any, handle: dict[str, Any]) -> Any:
        return await client.poll(handle)

    async def fetch(self, client: Any, answer: Any, dest: Path) -> Fetched:
        from gen3deval.systems._csm_api import check_glb_container

        paths = await client.fetch(answer, dest, verify=check_glb_container, assemble=False)
        n_meshes = len(answer.outputs)
        meshes = [str(p) for p in paths[:n_meshes]]
        parts = [str(p) for p in paths[n_meshes:]]
        return Fetched(meshes=meshes, parts=parts, info={"parts": len(parts)})


def csm_all_preset() -> list[dict[str, Any]]:
    """The six labelled configurations of the original CSM evaluation (``--system csm-all``)."""
    from gen3deval.systems.csm import CSM_CONFIGS

    return [{"name": "csm", "label": label, "settings": dict(cfg)} for label, cfg in CSM_CONFIGS.items()]
