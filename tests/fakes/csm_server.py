"""A loopback stand-in for the CSM.ai v3 sessions API, with fault injection.

A real :class:`http.server.ThreadingHTTPServer` on 127.0.0.1 (port 0) that follows the documented v3
sessions API as issue 10 describes it:

- ``POST /v3/sessions/`` (``image_to_3d``, ``image_to_kit``, ``chat_to_3d``): the body is validated as the
  real API would (required fields, allowed settings values; 400 for a body that is not JSON, 422 with a JSON
  ``message`` otherwise); a missing or wrong ``x-api-key`` -> 401. An image is a ``data:`` base64 URL (stored
  as a new ``ASSET_...``, returned as ``input.image._id``) or an ``ASSET_...`` id (unknown -> 404).
- ``GET /v3/sessions/{id}``: ``status`` is ``incomplete`` until the session's simulated duration has passed,
  then ``complete`` (meshes at ``output.meshes[i].data.glb_url``; ``image_to_kit`` also has
  ``output.part_meshes[i].data.glb_url``; ``chat_to_3d`` has ``messages[1].images[0].asset._id``, a new
  asset) or ``failed`` (``error.message``, the server's reason).
- GLB URLs are signed (``/files/{MESH_id}.glb?expires=...&token=...``, an HMAC of id and expiry) and need no
  key; an expired or forged token -> 403. They point to a second listener of the same stand-in (another port,
  so another origin, as the real API's storage host is), so a client that sends its key only to the API's
  origin never sends it with a download (``separate_file_origin=False`` serves them on the API's port). The GLBs are real: an icosphere (turbo) or a box (base) per mesh,
  for a kit ``n_parts`` boxes of different sizes placed apart along +X.

**The stand-in's own additions** (not documented by CSM): every session JSON carries ``cost`` (credits, a
number: 10 per image_to_3d, 20 per kit, 5 per chat) so that clients can be tested on a reported cost.

Every request is recorded (:class:`Recorded`: method, path, kind, headers, body size, time, status, fault).
Faults come from :class:`Fault` rules, per path kind (``submit``, ``poll``, ``download``), applied to the
first ``count`` matching requests, then with ``probability`` from a seeded RNG:
``429`` (with ``Retry-After``), ``500``, ``503``, ``drop`` (connection closed without an answer), ``slow``
(answer after ``delay_s``), ``malformed`` (a 200 whose JSON is cut), ``truncate`` (a GLB whose
``Content-Length`` is larger than the bytes sent), ``expire`` (403 on a download), ``fail`` (on submit: the
session is accepted and later ends ``failed`` with ``message``).

Use it as a context manager::

    with FakeCsm(FakeCsmConfig(faults=[Fault("429", "submit", count=1)])) as server:
        client = CsmClient(api_key=server.config.api_key, base_url=server.base_url, ...)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

JOB_TYPES = ("image_to_3d", "image_to_kit", "chat_to_3d")
GEOMETRY_MODELS = ("base", "turbo")
TEXTURE_MODELS = ("none", "baked", "pbr")
DECOMPOSITION_MODELS = ("base", "pro")
RESOLUTION_RANGE = (1_000, 1_000_000)
FAULT_KINDS = ("429", "500", "503", "drop", "slow", "malformed", "truncate", "expire", "fail")
PATH_KINDS = ("submit", "poll", "download")
COST = {"image_to_3d": 10.0, "image_to_kit": 20.0, "chat_to_3d": 5.0}


@dataclass
class Fault:
    """One fault rule: ``kind`` (FAULT_KINDS) on requests of path kind ``on`` (PATH_KINDS).

    Applied to the first ``count`` matching requests, then to each further one with ``probability``.
    ``job_type`` restricts submit/poll faults to one session type.
    """

    kind: str
    on: str
    count: int = 0
    probability: float = 0.0
    retry_after: float = 0.05  # seconds, 429 only
    delay_s: float = 1.0  # slow only
    job_type: str | None = None
    message: str = "generation failed: the input image has no recognisable object"  # fail only
    used: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.on not in PATH_KINDS:
            raise ValueError(f"fault path kind must be one of {PATH_KINDS}, got {self.on!r}")


@dataclass
class FakeCsmConfig:
    """Behaviour of the stand-in. Durations are seconds of simulated server work per session type."""

    api_key: str = "csm-test-key-0123456789abcdef"
    durations: dict[str, float] = field(
        default_factory=lambda: {"image_to_3d": 0.2, "image_to_kit": 0.2, "chat_to_3d": 0.1}
    )
    url_ttl_s: float = 600.0
    latency_s: tuple[float, float] = (0.0, 0.0)
    n_parts: int = 3
    # Signed URLs on a second listener (another origin, as the real API's storage host): an API client must
    # not send its key there. False: under /files/ on the API's own origin.
    separate_file_origin: bool = True
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0


@dataclass
class Recorded:
    """One request as the server saw it (headers with lower-case names)."""

    method: str
    path: str
    kind: str
    headers: dict[str, str]
    body_size: int
    time: float
    status: int | None = None
    fault: str | None = None


@dataclass
class _Session:
    id: str
    type: str
    created: float
    duration: float
    body: dict[str, Any]
    input_asset: str
    fail_message: str | None = None
    mesh_ids: list[str] = field(default_factory=list)
    part_ids: list[str] = field(default_factory=list)
    chat_asset: str | None = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24].upper()}"


def _glb(meshes: list[Any]) -> bytes:
    import trimesh

    scene = trimesh.Scene()
    for i, m in enumerate(meshes):
        scene.add_geometry(m, geom_name=f"part_{i}")
    return bytes(scene.export(file_type="glb"))


def mesh_glb(geometry_model: str) -> bytes:
    """The GLB served for an image_to_3d mesh: a box (12 faces) for base, an icosphere (80) for turbo."""
    import trimesh

    if geometry_model == "base":
        return _glb([trimesh.creation.box(extents=(1.0, 0.8, 0.6))])
    return _glb([trimesh.creation.icosphere(subdivisions=1, radius=0.5)])


def part_glb(index: int) -> bytes:
    """Kit part ``index``: a box of size 0.2 * (index + 1) centred at x = 1.5 * index (parts never overlap)."""
    import trimesh

    s = 0.2 * (index + 1)
    box = trimesh.creation.box(extents=(s, s * 0.5 + 0.1, s))
    box.apply_translation(np.array([1.5 * index, 0.0, 0.0]))
    return _glb([box])


class _Server(ThreadingHTTPServer):
    # A hosted API accepts hundreds of connections at once; socketserver's default backlog of 5 would make
    # the stand-in refuse bursts that the real service takes.
    request_queue_size = 256


class FakeCsm:
    """The stand-in server; a context manager that starts and stops it on a background thread."""

    def __init__(self, config: FakeCsmConfig | None = None) -> None:
        self.config = config or FakeCsmConfig()
        self.requests: list[Recorded] = []
        self.sessions: dict[str, _Session] = {}
        self.assets: dict[str, str] = {}  # ASSET id -> how it was made ("upload" or "chat")
        self.data_uploads = 0  # images received as data: URLs
        self.submissions: list[dict[str, Any]] = []  # accepted POST bodies, in order
        self._files: dict[str, bytes] = {}  # MESH id -> GLB bytes
        self._secret = uuid.uuid4().bytes
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> FakeCsm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"fake": self})
        for _ in range(2 if self.config.separate_file_origin else 1):
            server = _Server(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    @property
    def origin(self) -> str:
        """The API's origin (scheme://host:port)."""
        assert self._servers, "server not started"
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def files_origin(self) -> str:
        """Where the signed GLB URLs point (another port, i.e. another origin, unless configured otherwise)."""
        assert self._servers, "server not started"
        return f"http://127.0.0.1:{self._servers[-1].server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v3"

    # -- assertions helpers ---------------------------------------------------------------------------
    def count(self, kind: str, status: int | None = None) -> int:
        """Requests of path kind ``kind`` (optionally only those answered with ``status``)."""
        with self._lock:
            return sum(1 for r in self.requests if r.kind == kind and (status is None or r.status == status))

    def faults_applied(self, fault: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.fault == fault)

    # -- internals ------------------------------------------------------------------------------------
    def _pick_fault(self, on: str, job_type: str | None) -> Fault | None:
        with self._lock:
            for f in self.config.faults:
                if f.on != on or (f.job_type is not None and f.job_type != job_type):
                    continue
                if f.used < f.count:
                    f.used += 1
                    return f
                if f.probability > 0 and self._rng.random() < f.probability:
                    f.used += 1
                    return f
        return None

    def _latency(self) -> float:
        lo, hi = self.config.latency_s
        with self._lock:
            return self._rng.uniform(lo, hi) if hi > 0 else 0.0

    def _sign(self, mesh_id: str, expires: float) -> str:
        msg = f"{mesh_id}:{expires:.3f}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def _url(self, mesh_id: str, ext: str = "glb") -> str:
        expires = time.time() + self.config.url_ttl_s
        return f"{self.files_origin}/files/{mesh_id}.{ext}?expires={expires:.3f}&token={self._sign(mesh_id, expires)}"

    def _resolve_image(self, image: Any, where: str) -> str:
        if not isinstance(image, str) or not image:
            raise _ApiError(422, f"{where}: image must be a data URL or an asset id")
        if image.startswith("ASSET_"):
            with self._lock:
                if image not in self.assets:
                    raise _ApiError(404, f"asset {image} not found")
            return image
        if not image.startswith("data:image/") or ";base64," not in image:
            raise _ApiError(422, f"{where}: image must be a data:image/...;base64 URL or an ASSET_ id")
        try:
            raw = base64.b64decode(image.split(";base64,", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise _ApiError(422, f"{where}: image data is not valid base64") from None
        if not raw:
            raise _ApiError(422, f"{where}: image data is empty")
        asset = _new_id("ASSET")
        with self._lock:
            self.assets[asset] = "upload"
            self.data_uploads += 1
        return asset

    def _create(self, body: Any) -> _Session:
        if not isinstance(body, dict):
            raise _ApiError(422, "body must be a JSON object")
        jt = body.get("type")
        if jt not in JOB_TYPES:
            raise _ApiError(422, f"type must be one of {', '.join(JOB_TYPES)}")
        if jt == "chat_to_3d":
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not isinstance(msgs[0], dict):
                raise _ApiError(422, "messages: a non-empty list of messages is required")
            m0 = msgs[0]
            if m0.get("type") != "user_prompt" or not isinstance(m0.get("message"), str):
                raise _ApiError(422, "messages[0]: a user_prompt with a message string is required")
            imgs = m0.get("images")
            if not isinstance(imgs, list) or len(imgs) != 1:
                raise _ApiError(422, "messages[0].images: exactly one image is required")
            asset = self._resolve_image(imgs[0], "messages[0].images[0]")
        else:
            inp = body.get("input")
            if not isinstance(inp, dict):
                raise _ApiError(422, "input: an object is required")
            if inp.get("model", "sculpt") != "sculpt":
                raise _ApiError(422, "input.model must be 'sculpt'")
            settings = inp.get("settings", {})
            if not isinstance(settings, dict):
                raise _ApiError(422, "input.settings must be an object")
            allowed: dict[str, tuple[str, ...]] = {
                "geometry_model": GEOMETRY_MODELS,
                "texture_model": TEXTURE_MODELS,
            }
            if jt == "image_to_kit":
                allowed["decomposition_model"] = DECOMPOSITION_MODELS
            for key, value in settings.items():
                if key == "resolution" and jt == "image_to_3d":
                    lo, hi = RESOLUTION_RANGE
                    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                        raise _ApiError(422, f"input.settings.resolution must be an integer in [{lo}, {hi}]")
                elif key not in allowed:
                    raise _ApiError(422, f"input.settings.{key} is not a setting of {jt}")
                elif value not in allowed[key]:
                    raise _ApiError(422, f"input.settings.{key} must be one of {', '.join(allowed[key])}")
            asset = self._resolve_image(inp.get("image"), "input.image")
        sess = _Session(
            id=_new_id("SESSION"),
            type=jt,
            created=time.monotonic(),
            duration=self.config.durations.get(jt, 0.1),
            body=body,
            input_asset=asset,
        )
        with self._lock:
            self.sessions[sess.id] = sess
            self.submissions.append(body)
        return sess

    def _complete(self, sess: _Session) -> None:
        """Make the outputs of a session whose time has come (once)."""
        with self._lock:
            if sess.mesh_ids or sess.chat_asset:
                return
            if sess.type == "chat_to_3d":
                sess.chat_asset = _new_id("ASSET")
                self.assets[sess.chat_asset] = "chat"
                return
            settings = sess.body["input"].get("settings", {})
            mid = _new_id("MESH")
            if sess.type == "image_to_kit":
                parts = [part_glb(i) for i in range(self.config.n_parts)]
                sess.part_ids = [_new_id("MESH") for _ in parts]
                for pid, data in zip(sess.part_ids, parts, strict=True):
                    self._files[pid] = data
                self._files[mid] = mesh_glb(settings.get("geometry_model", "turbo"))
            else:
                self._files[mid] = mesh_glb(settings.get("geometry_model", "turbo"))
            sess.mesh_ids = [mid]

    def _mesh_entry(self, mesh_id: str) -> dict[str, Any]:
        return {
            "_id": mesh_id,
            "data": {
                "glb_url": self._url(mesh_id, "glb"),
                "obj_url": self._url(mesh_id, "obj"),
                "fbx_url": self._url(mesh_id, "fbx"),
                "usdz_url": self._url(mesh_id, "usdz"),
            },
        }

    def session_json(self, sess: _Session) -> dict[str, Any]:
        done = time.monotonic() - sess.created >= sess.duration
        status = "incomplete"
        if done:
            status = "failed" if sess.fail_message else "complete"
        out: dict[str, Any] = {"_id": sess.id, "type": sess.type, "status": status, "cost": COST[sess.type]}
        image = {"_id": sess.input_asset, "data": {"image_url": f"{self.origin}/assets/{sess.input_asset}"}}
        if sess.type == "chat_to_3d":
            m0 = dict(sess.body["messages"][0])
            m0["images"] = [{"asset": image}]
            out["messages"] = [m0]
        else:
            out["input"] = {k: v for k, v in sess.body["input"].items() if k != "image"} | {"image": image}
        if status == "failed":
            out["error"] = {"message": sess.fail_message}
        elif status == "complete":
            self._complete(sess)
            if sess.type == "chat_to_3d":
                asset = {
                    "_id": sess.chat_asset,
                    "data": {"image_url": f"{self.origin}/assets/{sess.chat_asset}"},
                }
                out["messages"].append({"type": "image_generation", "images": [{"asset": asset}]})
            else:
                out["output"] = {"meshes": [self._mesh_entry(m) for m in sess.mesh_ids]}
                if sess.type == "image_to_kit":
                    out["output"]["part_meshes"] = [self._mesh_entry(p) for p in sess.part_ids]
        return out


class _Handler(BaseHTTPRequestHandler):
    fake: FakeCsm
    server_version = "FakeCsm/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read self.fake.requests
        pass

    def _kind(self, method: str, path: str) -> str:
        if path.startswith("/files/"):
            return "download"
        if method == "POST":
            return "submit"
        return "poll"

    def _handle(self, method: str) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        kind = self._kind(method, url.path)
        rec = Recorded(
            method=method,
            path=url.path,
            kind=kind,
            headers={k.lower(): v for k, v in self.headers.items()},
            body_size=len(body),
            time=time.monotonic(),
        )
        with fake._lock:
            fake.requests.append(rec)
        delay = fake._latency()
        if delay:
            time.sleep(delay)
        try:
            self._route(method, url.path, url.query, body, rec)
        except _ApiError as e:
            self._send_json(e.status, {"message": e.message}, rec)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to answer
            pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _send_json(self, status: int, obj: Any, rec: Recorded, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._send(status, data, rec, "application/json", headers)

    def _send(
        self,
        status: int,
        data: bytes,
        rec: Recorded,
        ctype: str,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _fault(self, fault: Fault, rec: Recorded) -> bool:
        """Apply a transport-level fault; True when the request was answered (or dropped) by it."""
        rec.fault = fault.kind
        if fault.kind == "429":
            self._send_json(
                429, {"message": "Too many requests"}, rec, {"Retry-After": f"{fault.retry_after:g}"}
            )
            return True
        if fault.kind in ("500", "503"):
            self._send_json(int(fault.kind), {"message": "internal error"}, rec)
            return True
        if fault.kind == "drop":
            self.close_connection = True
            return True
        if fault.kind == "slow":
            time.sleep(fault.delay_s)
        return False

    def _route(self, method: str, path: str, query: str, body: bytes, rec: Recorded) -> None:
        fake = self.fake
        if rec.kind == "download":
            self._download(path, query, rec)
            return
        if self.headers.get("x-api-key") != fake.config.api_key:
            raise _ApiError(401, "Invalid or missing API key")
        if method == "POST" and path.rstrip("/") == "/v3/sessions":
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                raise _ApiError(400, "body is not valid JSON") from None
            jt = parsed.get("type") if isinstance(parsed, dict) else None
            fault = fake._pick_fault("submit", jt)
            if fault is not None and fault.kind != "fail" and self._fault(fault, rec):
                return
            sess = fake._create(parsed)
            if fault is not None and fault.kind == "fail":
                rec.fault = "fail"
                sess.fail_message = fault.message
            if fault is not None and fault.kind == "malformed":
                self._send(200, json.dumps(fake.session_json(sess)).encode()[:25], rec, "application/json")
                return
            self._send_json(200, fake.session_json(sess), rec)
            return
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v3", "sessions"]:
            with fake._lock:
                sess_or_none = fake.sessions.get(parts[2])
            if sess_or_none is None:
                raise _ApiError(404, f"session {parts[2]} not found")
            fault = fake._pick_fault("poll", sess_or_none.type)
            if fault is not None and fault.kind != "fail" and self._fault(fault, rec):
                return
            obj = fake.session_json(sess_or_none)
            if fault is not None and fault.kind == "malformed":
                self._send(200, json.dumps(obj).encode()[:25], rec, "application/json")
                return
            self._send_json(200, obj, rec)
            return
        raise _ApiError(404, f"no route for {method} {path}")

    def _download(self, path: str, query: str, rec: Recorded) -> None:
        fake = self.fake
        name = path.rsplit("/", 1)[-1]
        mesh_id, _, ext = name.partition(".")
        q = parse_qs(query)
        try:
            expires = float(q["expires"][0])
            token = q["token"][0]
        except (KeyError, ValueError, IndexError):
            raise _ApiError(403, "missing signature") from None
        if not hmac.compare_digest(token, fake._sign(mesh_id, expires)):
            raise _ApiError(403, "invalid signature")
        fault = fake._pick_fault("download", None)
        if fault is not None and fault.kind == "expire":
            rec.fault = "expire"
            raise _ApiError(403, "Request has expired")
        if time.time() > expires:
            raise _ApiError(403, "Request has expired")
        with fake._lock:
            data = fake._files.get(mesh_id)
        if data is None or ext != "glb":
            raise _ApiError(404, f"file {name} not found")
        if fault is not None and fault.kind not in ("expire", "fail") and self._fault(fault, rec):
            return
        if fault is not None and fault.kind == "truncate":
            self.close_connection = True
            self._send(200, data[: len(data) // 2], rec, "model/gltf-binary", length=len(data))
            return
        self._send(200, data, rec, "model/gltf-binary")


def tiny_png() -> bytes:
    """A valid 4x4 RGB PNG (for tests that need an image file)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()
