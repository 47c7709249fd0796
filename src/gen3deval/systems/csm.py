"""The CSM.ai client (v3 sessions API): submit, poll and fetch of image-to-3D jobs, as durable remote jobs.

:class:`CsmClient` speaks the documented v3 sessions API over :class:`gen3deval.remote.http.ApiClient` (limits,
retries with backoff and ``Retry-After``, timeouts, secret redaction):

- ``submit`` sends ``POST /sessions/`` for ``image_to_3d``, ``image_to_kit`` or ``chat_to_3d`` and returns a
  small JSON handle (:class:`JobHandle` as a dict) that the caller stores before polling. The image goes as a
  ``data:`` base64 URL the first time; the server's asset id (``ASSET_...``) comes back in the handle so that
  every later job of that image sends the id instead.
- ``poll`` reads ``GET /sessions/{id}`` -> :class:`PollResult` (``pending`` / ``done`` with GLB URLs / ``failed``
  with the server's message). A ``chat_to_3d`` job has two steps: when the chat session completes, ``poll``
  submits the ``image_to_3d`` step (turbo + pbr) on the re-prompted image and returns the updated handle
  (both session ids), which the caller must store again.
- ``fetch`` downloads every GLB, verifies each by loading it (:func:`gen3deval.mesh.io.load_mesh`), keeps kit
  parts and writes their assembly as placed (the scored candidate); a 403 (expired signed URL) re-polls the
  session once for fresh URLs.

:data:`CSM_CONFIGS` holds the six labelled configurations of the ``csm-all`` preset. The engine integration
(submit/poll/fetch as a stage of ``gen3deval run``, the ``csm`` system entry and the preset) comes with phase 2
of issue 10; nothing here touches the store.

Where a request may be sent twice: a ``POST /sessions/`` whose answer is lost (dropped connection, timeout)
is retried and may create a second session on the server; only the answered one is tracked.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from gen3deval.errors import ConfigError
from gen3deval.mesh.assemble import assemble, write_assembly
from gen3deval.remote.errors import FinalError, MaybeSentError, RemoteError
from gen3deval.remote.http import ApiClient
from gen3deval.remote.policy import RemotePolicy
from gen3deval.remote.secrets import load_api_key, redact
from gen3deval.remote.tracking import note_resubmit
from gen3deval.systems._csm_api import (
    IMAGE_MIME,
    JOB_TYPES,
    RESOLUTION,
    JobHandle,
    PollResult,
    dig,
    image_body,
    verify_glb,
)

__all__ = [
    "CSM_CONFIGS",
    "JOB_TYPES",
    "CsmClient",
    "JobHandle",
    "PollResult",
    "assemble",
    "load_csm_key",
    "resolve_base_url",
    "verify_glb",
]

DEFAULT_BASE_URL = "https://api.csm.ai/v3"
BASE_URL_ENV = "CSM_BASE_URL"
API_KEY_ENV = "CSM_API_KEY"
KEY_FILE = Path("~/.config/gen3deval/csm.key")
LEGACY_KEY_FILE = ".csm_config"  # the original CSM evaluation script's file, read from the working directory

# Re-prompt sent with chat_to_3d (setting ``prompt`` overrides it).
DEFAULT_CHAT_PROMPT = (
    "Make this a clean, well-lit, front-facing image of the main object, ready for 3D modeling."
)

# The six configurations of csm-all (the original CSM evaluation), all at resolution 200000. ``job_type``
# picks the session type; the other keys are API settings. ``image_to_kit`` has no resolution setting in the
# API, so csm-kit's resolution is recorded but not sent; csm-chat's geometry/texture apply to its second step.
CSM_CONFIGS: dict[str, dict[str, Any]] = {
    "csm-base": {
        "job_type": "image_to_3d",
        "geometry_model": "base",
        "texture_model": "none",
        "resolution": RESOLUTION,
    },
    "csm-turbo": {
        "job_type": "image_to_3d",
        "geometry_model": "turbo",
        "texture_model": "none",
        "resolution": RESOLUTION,
    },
    "csm-turbo-baked": {
        "job_type": "image_to_3d",
        "geometry_model": "turbo",
        "texture_model": "baked",
        "resolution": RESOLUTION,
    },
    "csm-turbo-pbr": {
        "job_type": "image_to_3d",
        "geometry_model": "turbo",
        "texture_model": "pbr",
        "resolution": RESOLUTION,
    },
    "csm-kit": {
        "job_type": "image_to_kit",
        "decomposition_model": "pro",
        "geometry_model": "turbo",
        "texture_model": "baked",
        "resolution": RESOLUTION,
    },
    "csm-chat": {
        "job_type": "chat_to_3d",
        "geometry_model": "turbo",
        "texture_model": "pbr",
        "resolution": RESOLUTION,
    },
}


def resolve_base_url(setting: str | None = None) -> str:
    """The API base URL: the ``base_url`` setting, else ``$CSM_BASE_URL``, else https://api.csm.ai/v3."""
    url = setting or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"base_url: expected an http(s) URL, got {url!r}")
    return url.rstrip("/")


def load_csm_key(*, interactive: bool | None = None) -> str:
    """The CSM key: ``$CSM_API_KEY``, else ~/.config/gen3deval/csm.key (0600), else ./.csm_config, else a prompt."""
    return load_api_key(
        env_var=API_KEY_ENV,
        config_file=KEY_FILE.expanduser(),
        legacy_files=(Path.cwd() / LEGACY_KEY_FILE,),
        prompt="CSM.ai API key: ",
        interactive=interactive,
    )


class CsmClient:
    """Submit, poll and fetch CSM jobs. Use ``async with`` (or call :meth:`aclose`).

    Args:
        api_key: the key (sent as ``x-api-key``, never in messages; see :func:`load_csm_key`).
        base_url: the ``base_url`` setting (else ``$CSM_BASE_URL``, else the public API).
        policy: limits, retries and poll schedule (:class:`RemotePolicy`).
        transport, sleep: passed to :class:`ApiClient` (tests).
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        policy: RemotePolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not api_key:
            raise ConfigError(f"no CSM API key: set {API_KEY_ENV}")
        self.base_url = resolve_base_url(base_url)
        self.policy = policy or RemotePolicy()
        self._secrets = (api_key,)
        self._sleep = sleep
        self.api = ApiClient(
            self.base_url,
            headers={"x-api-key": api_key},
            policy=self.policy,
            secrets=self._secrets,
            transport=transport,
            sleep=sleep,
        )
        # Sessions POSTed again after an answer was lost (MaybeSentError): each may have made a second
        # server-side session; at most one per submission, counted for the report.
        self.resubmitted = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, api_key: str | None = None) -> CsmClient:
        """A client from a system's settings (``base_url`` and the :class:`RemotePolicy` fields)."""
        return cls(
            api_key=api_key or load_csm_key(),
            base_url=settings.get("base_url"),
            policy=RemotePolicy.from_settings(settings),
        )

    async def __aenter__(self) -> CsmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.api.aclose()

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # -- submit ----------------------------------------------------------------------------------------
    async def upload_or_reuse(self, image_path: str | Path, asset_id: str | None) -> str:
        """The image field of a request: ``asset_id`` when known, else the file as a ``data:`` base64 URL."""
        if asset_id:
            return asset_id
        p = Path(image_path)
        mime = IMAGE_MIME.get(p.suffix.lower())
        if mime is None:
            raise ConfigError(f"{p}: not an image CSM accepts (use {', '.join(IMAGE_MIME)})")
        try:
            data = await asyncio.to_thread(p.read_bytes)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the image ({exc.strerror or type(exc).__name__})") from None
        if not data:
            raise ConfigError(f"{p}: the image file is empty")
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    async def _post_session(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self.api.request_json("POST", "/sessions/", json=body)
        except MaybeSentError:
            # The answer was lost after the request may have reached CSM: one more try (the rule:
            # resubmitted once, counted), never a retry loop that could pay for several sessions.
            self.resubmitted += 1
            note_resubmit()
            resp = await self.api.request_json("POST", "/sessions/", json=body)
        if not isinstance(resp, dict):
            raise FinalError(f"CSM answered POST /sessions/ with {type(resp).__name__}, not an object")
        sid = resp.get("_id")
        if not isinstance(sid, str) or not sid:
            raise FinalError(f"CSM answered POST /sessions/ without a session id ({body['type']})")
        return resp

    async def submit(
        self,
        job_type: str,
        image_path: str | Path,
        settings: Mapping[str, Any],
        *,
        asset_id: str | None = None,
        prompt: str | None = None,
    ) -> dict[str, Any]:
        """Start a job; returns its handle (a :class:`JobHandle` dict) to store before polling."""
        if job_type not in JOB_TYPES:
            raise ConfigError(f"job_type: expected one of {', '.join(JOB_TYPES)}, got {job_type!r}")
        image = await self.upload_or_reuse(image_path, asset_id)
        if job_type == "chat_to_3d":
            prompt = prompt or settings.get("prompt") or DEFAULT_CHAT_PROMPT
            body: dict[str, Any] = {
                "type": "chat_to_3d",
                "messages": [{"type": "user_prompt", "message": prompt, "images": [image]}],
            }
            resp = await self._post_session(body)
            returned = dig(resp, "messages", 0, "images", 0, "asset", "_id")
        else:
            body = image_body(job_type, image, settings)
            resp = await self._post_session(body)
            returned = dig(resp, "input", "image", "_id")
        handle = JobHandle(
            type=job_type,
            sessions=[resp["_id"]],
            asset_id=asset_id or (returned if isinstance(returned, str) else None),
            settings={k: v for k, v in settings.items() if k != "prompt"},
            prompt=prompt,
        )
        self._note_cost(handle, resp)
        return handle.to_dict()

    # -- poll ------------------------------------------------------------------------------------------
    @staticmethod
    def _note_cost(handle: JobHandle, resp: Any) -> None:
        cost = dig(resp, "cost")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            handle.costs[str(resp["_id"])] = float(cost)

    async def poll(self, handle: Mapping[str, Any] | JobHandle) -> PollResult:
        """Read the job's current session; a completed chat step submits the image_to_3d step (still pending)."""
        h = handle if isinstance(handle, JobHandle) else JobHandle.from_dict(handle)
        sid = h.sessions[-1]
        resp = await self.api.request_json("GET", f"/sessions/{sid}")
        status = dig(resp, "status")
        if status not in ("incomplete", "complete", "failed"):
            raise FinalError(f"CSM session {sid}: unexpected status {status!r}")
        self._note_cost(h, {"_id": sid, "cost": dig(resp, "cost")})
        cost = sum(h.costs.values()) if h.costs else None
        if status == "incomplete":
            return PollResult("pending", h.to_dict(), cost=cost)
        if status == "failed":
            reason = dig(resp, "error", "message") or dig(resp, "message") or dig(resp, "status_message")
            msg = f"CSM session {sid} failed: {reason or 'no reason given by the server'}"
            return PollResult("failed", h.to_dict(), message=self._redact(str(msg)), cost=cost)
        if h.type == "chat_to_3d" and h.step == 1:
            asset = dig(resp, "messages", 1, "images", 0, "asset", "_id")
            if not isinstance(asset, str) or not asset:
                raise FinalError(f"CSM chat session {sid} completed without messages[1].images[0].asset._id")
            settings = {"geometry_model": "turbo", "texture_model": "pbr"} | {
                k: v for k, v in h.settings.items() if k in ("geometry_model", "texture_model", "resolution")
            }
            step2 = await self._post_session(image_body("image_to_3d", asset, settings))
            h.chat_asset_id = asset
            h.sessions.append(step2["_id"])
            self._note_cost(h, step2)
            return PollResult("pending", h.to_dict(), cost=sum(h.costs.values()) if h.costs else None)
        outputs = [dig(m, "data", "glb_url") for m in dig(resp, "output", "meshes") or []]
        parts = [dig(m, "data", "glb_url") for m in dig(resp, "output", "part_meshes") or []]
        if not outputs or not all(isinstance(u, str) and u for u in outputs + parts):
            raise FinalError(f"CSM session {sid} completed without GLB URLs in output.meshes")
        if h.type == "image_to_kit" and not parts:
            raise FinalError(f"CSM kit session {sid} completed without output.part_meshes")
        return PollResult("done", h.to_dict(), outputs=outputs, parts=parts, cost=cost)

    # -- fetch -----------------------------------------------------------------------------------------
    async def fetch(
        self,
        poll_result: PollResult,
        dest_dir: str | Path,
        *,
        verify: Callable[[Path], None] = verify_glb,
        assemble: bool = True,
    ) -> list[Path]:
        """Download and verify every GLB of a done job into ``dest_dir``; the first path is the scored candidate.

        image_to_3d / chat_to_3d: ``mesh_0.glb`` (then any further meshes). image_to_kit: ``assembly.glb`` (the
        parts as placed, one mesh), then ``part_00.glb``..., then ``mesh_0.glb``; with ``assemble=False`` (the
        engine assembles in a worker process) the meshes come first, then the parts. ``verify`` checks each
        file (default: load it as a mesh). A 403 (expired URL) re-polls the session once for fresh URLs; a
        second one is final.
        """
        if poll_result.status != "done":
            raise ValueError(f"fetch needs a done poll result, got {poll_result.status!r}")
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        names = [f"mesh_{i}.glb" for i in range(len(poll_result.outputs))]
        names += [f"part_{i:02d}.glb" for i in range(len(poll_result.parts))]
        urls = list(poll_result.outputs) + list(poll_result.parts)
        paths: dict[str, Path] = {}
        repolled = False
        i = 0
        while i < len(urls):
            try:
                paths[names[i]] = await self.api.download(urls[i], dest / names[i], verify=verify)
            except RemoteError as exc:
                if exc.status != 403 or repolled:
                    raise
                repolled = True
                fresh = await self.poll(poll_result.handle)
                if fresh.status != "done" or len(fresh.outputs) != len(poll_result.outputs):
                    raise FinalError(
                        f"download refused (403) and the session has no fresh URLs: {exc}"
                    ) from None
                urls = list(fresh.outputs) + list(fresh.parts)
                continue
            i += 1
        out = [paths[n] for n in names]
        if poll_result.parts and assemble:
            part_paths = [paths[n] for n in names if n.startswith("part_")]
            assembly = await asyncio.to_thread(write_assembly, part_paths, dest / "assembly.glb")
            mesh_paths = [paths[n] for n in names if n.startswith("mesh_")]
            return [assembly, *part_paths, *mesh_paths]
        return out

    # -- convenience -----------------------------------------------------------------------------------
    async def run_job(
        self,
        job_type: str,
        image_path: str | Path,
        settings: Mapping[str, Any],
        dest_dir: str | Path,
        *,
        asset_id: str | None = None,
        on_handle: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[PollResult, list[Path]]:
        """Submit, poll on the policy's schedule until done or failed (or ``timeout_min``), fetch when done.

        ``on_handle`` is called with every new handle (after submit, after a chat step) so it can be stored.
        Without an engine (phase 2) this is the whole job; a timeout raises :class:`FinalError`.
        """
        handle = await self.submit(job_type, image_path, settings, asset_id=asset_id)
        if on_handle:
            on_handle(handle)
        deadline = time.monotonic() + self.policy.timeout_min * 60.0
        delays = self.policy.poll_delays()
        while True:
            await self._sleep(next(delays))
            result = await self.poll(handle)
            if result.handle != handle:
                handle = result.handle
                if on_handle:
                    on_handle(handle)
            if result.status == "failed":
                return result, []
            if result.status == "done":
                return result, await self.fetch(result, dest_dir)
            if time.monotonic() > deadline:
                raise FinalError(
                    f"CSM job {handle['sessions']} timed out after {self.policy.timeout_min:g} min"
                )
