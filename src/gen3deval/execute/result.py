"""What an executor returns, and the limits it runs under (PROTOCOLS.md section 9)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gen3deval.mesh.types import Mesh

# The error classes of PROTOCOLS.md section 9, in the order a failure is checked.
ERROR_CLASSES = (
    "no_code",
    "syntax",
    "runtime",
    "timeout",
    "memory",
    "no_geometry",
    "invalid_geometry",
    "sandbox_violation",
)


@dataclass(frozen=True)
class Limits:
    """Per-program sandbox limits.

    Attributes:
        wall_s: wall-clock seconds before the program's process group is killed.
        cpu_s: CPU seconds (RLIMIT_CPU).
        memory_mb: address space in MiB (RLIMIT_AS); CadQuery needs >= 2048 (ARCHITECTURE.md).
        file_mb: largest file the program may write, MiB (RLIMIT_FSIZE).
        processes: process/thread count (RLIMIT_NPROC, per sandbox user where supported).
        network: False = no network (separate network namespace where permitted).
    """

    wall_s: float = 30.0
    cpu_s: float = 30.0
    memory_mb: int = 2048
    file_mb: int = 64
    processes: int = 64
    network: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExecResult:
    """The outcome of running one program.

    Attributes:
        executable: True when the program ran within its limits and produced valid geometry.
        mesh: the result in the canonical +Y-up frame, or None.
        error_class: one of ERROR_CLASSES, or None when executable.
        message: the error message, trimmed to a few hundred characters.
        stdout / stderr: tails of the program's output.
        wall_s: wall-clock seconds; peak_mb: peak resident memory of the program, MiB.
        limits: the limits it ran under; sandbox: how it was isolated (e.g. {"network": "unshare"}).
    """

    executable: bool
    mesh: Mesh | None = None
    error_class: str | None = None
    message: str = ""
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    peak_mb: float = 0.0
    language: str = ""
    limits: Limits = field(default_factory=Limits)
    sandbox: dict[str, Any] = field(default_factory=dict)
