"""Systems that generate on a remote server (hosted APIs): the three steps the engine drives.

A :class:`RemoteSystem` never blocks a CPU worker while a server works. The engine
(:mod:`gen3deval.engine.remote_jobs`) runs its jobs concurrently on an asyncio loop of the engine process:

1. ``submit`` starts the job and returns a small JSON handle (session ids). The engine stores the handle the
   moment ``submit`` returns, before any poll; a rerun polls stored handles instead of submitting again.
2. ``poll`` reports ``pending`` / ``done`` / ``failed`` (with the server's message) and may return an updated
   handle (a second step submitted), which the engine stores before polling again.
3. ``fetch`` downloads the outputs of a done job into a folder (checked while downloading; signed URLs
   expire, so it runs as soon as the job is done) and returns a :class:`Fetched`.

The downloaded mesh is then loaded, checked and made canonical by the ``generate`` stage in a worker process
(:func:`gen3deval.engine.stages.stage_generate` with ``fetched``), like any other candidate.

Settings that do not change what the server makes (limits, timeouts, where the key comes from) are listed in
``operational_settings``: they are left out of the ``generate`` key, so changing them never pays for a job
again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from gen3deval.mesh.types import Mesh
from gen3deval.remote.policy import RemotePolicy
from gen3deval.suites.base import Case
from gen3deval.systems.base import Candidate, GenerationFailed, System


class PollAnswer(Protocol):
    """What ``poll`` returns: ``status`` in pending/done/failed, the (updated) ``handle``, the server's
    ``message`` when failed and the ``cost`` reported so far (or None)."""

    status: str
    handle: dict[str, Any]
    message: str | None
    cost: float | None


@dataclass(frozen=True)
class Fetched:
    """The downloaded outputs of a done job (paths inside the job's scratch folder).

    ``meshes``: the meshes as downloaded (the first is the candidate unless there are parts); ``parts``: kit
    parts, assembled as placed into the candidate by the generate stage; ``up``: the files' up axis;
    ``info``: JSON-able facts kept in the generate row's ``value["remote"]`` (part count, ...).
    A program instead (a model that writes code): ``program`` (its text) in ``language``, ``answer`` the
    file of the model's whole answer (kept as an artifact); ``failure`` (error class, message) when the answer
    holds no usable program (``no_code``, a refusal, ``truncated``...).
    """

    meshes: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    up: str = "y"
    info: dict[str, Any] = field(default_factory=dict)
    program: str | None = None
    language: str | None = None
    answer: str | None = None
    failure: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "meshes": self.meshes,
            "parts": self.parts,
            "up": self.up,
            "info": self.info,
            "program": self.program,
            "language": self.language,
            "answer": self.answer,
            "failure": list(self.failure) if self.failure else None,
        }


class RemoteSystem(System):
    """Base class of remote systems (see the module docstring). ``service`` names the API in reports."""

    remote: ClassVar[bool] = True
    output = "mesh"
    service: ClassVar[str] = ""
    operational_settings: ClassVar[tuple[str, ...]] = ()

    def policy(self) -> RemotePolicy:
        """The per-system limits (concurrency, rps, retries, poll schedule, timeout)."""
        return RemotePolicy()

    def credentials(self) -> None:
        """Load what the client needs (the API key) in the engine process, before any work; raise
        :class:`~gen3deval.errors.ConfigError` when missing. Never stores it in settings."""

    def secret_env(self) -> tuple[str, ...]:
        """Environment variables holding this system's secrets: hidden from workers during a run."""
        return ()

    def asset_key(self, case: Case) -> str | None:
        """A key under which the server's id of this case's uploaded input can be reused by other jobs (e.g.
        the API origin + the image's content hash); None when nothing is reused."""
        return None

    def open_client(self) -> Any:
        """A new client, an async context manager, made on the engine's event loop."""
        raise NotImplementedError

    async def submit(
        self,
        client: Any,
        case: Case,
        attempt: int,
        asset_id: str | None,
        feedback: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start the job of ``case``; returns its handle (JSON-able; ``asset_id`` in it when the server gave
        one for the input). ``feedback``: for a revising system (``revises``), what the engine tells attempt
        i+1 about attempt i (``program``, ``answer`` paths, ``executable``, ``error_class``, ``error``,
        ``render``: see :meth:`gen3deval.engine.runner.Engine._feedback`)."""
        raise NotImplementedError

    async def poll(self, client: Any, handle: dict[str, Any]) -> PollAnswer:
        raise NotImplementedError

    async def fetch(self, client: Any, answer: Any, dest: Path) -> Fetched:
        """Download the outputs of a done job (``answer`` from :meth:`poll`) into ``dest``."""
        raise NotImplementedError

    def generate(self, case: Case, reference: Mesh | None, workdir: Path, attempt: int = 1) -> Candidate:
        raise GenerationFailed(
            "generation_error",
            f"system {self.name!r} runs on a server: its jobs are submitted by `gen3deval run`, not generate()",
        )
