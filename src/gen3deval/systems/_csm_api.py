"""Data and helpers of the CSM client (:mod:`gen3deval.systems.csm`): the job handle, poll results, request
bodies, response digging and GLB verification (kit parts are assembled by :mod:`gen3deval.mesh.assemble`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gen3deval.errors import ConfigError, MeshLoadError
from gen3deval.mesh.io import load_mesh

JOB_TYPES = ("image_to_3d", "image_to_kit", "chat_to_3d")
RESOLUTION = 200_000
IMAGE_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass
class JobHandle:
    """What the caller stores for one job (JSON-able via :meth:`to_dict`).

    ``sessions``: the session ids, one per step submitted (chat_to_3d: chat, then image_to_3d); ``step`` is
    ``len(sessions)``; ``asset_id``: the input image's asset id (reuse it for later jobs of the same image);
    ``chat_asset_id``: the re-prompted image (chat_to_3d); ``costs``: credits reported per session.
    """

    type: str
    sessions: list[str]
    asset_id: str | None
    settings: dict[str, Any]
    prompt: str | None = None
    chat_asset_id: str | None = None
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return len(self.sessions)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["step"] = self.step
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobHandle:
        try:
            return cls(
                type=str(d["type"]),
                sessions=[str(s) for s in d["sessions"]],
                asset_id=d.get("asset_id"),
                settings=dict(d.get("settings") or {}),
                prompt=d.get("prompt"),
                chat_asset_id=d.get("chat_asset_id"),
                costs={str(k): float(v) for k, v in (d.get("costs") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a CSM job handle ({type(exc).__name__}: {exc}): {dict(d)!r}") from None


@dataclass
class PollResult:
    """One poll: ``status`` is ``pending``, ``done`` or ``failed``.

    ``handle``: the (possibly updated) handle as a dict, to store; ``outputs``: GLB URLs of the meshes;
    ``parts``: GLB URLs of the kit parts; ``message``: the server's reason when failed; ``cost``: credits the
    server reported for the job so far (sum over its sessions), None when it reports none.
    """

    status: str
    handle: dict[str, Any]
    outputs: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    message: str | None = None
    cost: float | None = None


def image_body(job_type: str, image: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST /sessions/`` body of an ``image_to_3d`` or ``image_to_kit`` job (the kit has no resolution)."""
    geometry = settings.get("geometry_model", "turbo")
    texture = settings.get("texture_model", "none")
    if job_type == "image_to_kit":
        api_settings = {
            "decomposition_model": settings.get("decomposition_model", "pro"),
            "geometry_model": geometry,
            "texture_model": texture,
        }
    else:
        api_settings = {
            "geometry_model": geometry,
            "texture_model": texture,
            "resolution": _resolution(settings.get("resolution", RESOLUTION)),
        }
    return {"type": job_type, "input": {"image": image, "model": "sculpt", "settings": api_settings}}


def _resolution(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"resolution: expected an integer number of faces, got {value!r}") from None


def dig(obj: Any, *keys: str | int) -> Any:
    """``obj[k0][k1]...`` or None when any step is missing or of the wrong type."""
    for k in keys:
        if isinstance(k, int):
            if not isinstance(obj, list) or len(obj) <= k:
                return None
        elif not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def verify_glb(path: Path) -> None:
    """Raise ValueError unless ``path`` loads as a mesh with at least one face."""
    try:
        mesh = load_mesh(path)
    except MeshLoadError as exc:
        raise ValueError(str(exc)) from None
    if mesh.n_faces == 0:
        raise ValueError(f"{path}: the mesh has no faces")


def check_glb_container(path: Path) -> None:
    """Cheap check of a downloaded GLB (no mesh decoding): the glTF binary header, a total length equal to the
    file size (else :class:`RetryableError`: the body was cut short) and a JSON chunk that parses.

    The engine uses this while downloading; the full load happens in a worker process.
    """
    import json
    import struct

    from gen3deval.remote.errors import RetryableError

    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(20)
        if len(head) < 20 or head[:4] != b"glTF":
            raise ValueError(f"{path.name}: not a binary glTF (GLB) file")
        _version, length, json_len, json_type = struct.unpack("<IIII", head[4:20])
        if length > size:
            raise RetryableError(f"{path.name}: GLB cut short ({size} of {length} bytes)", status=200)
        if length != size or json_type != 0x4E4F534A or json_len > length - 20:
            raise ValueError(f"{path.name}: malformed GLB header")
        try:
            json.loads(fh.read(json_len))
        except ValueError:
            raise ValueError(f"{path.name}: the GLB's JSON chunk does not parse") from None
