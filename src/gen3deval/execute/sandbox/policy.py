"""Which sandbox layers apply (``GEN3DEVAL_SANDBOX``) and the parent-side description of a run's sandbox.

The description stored with a result (``ExecResult.sandbox``) is computed here, in the parent, from
what the parent set up; nothing a program prints can change it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gen3deval.errors import ConfigError
from gen3deval.execute.result import Limits

if TYPE_CHECKING:  # the layer modules import process, which imports this module: import them lazily
    from gen3deval.execute.sandbox.cgroups import ProgramCgroup
    from gen3deval.execute.sandbox.seccomp import SeccompPolicy

ENV_VAR = "GEN3DEVAL_SANDBOX"
SANDBOX_LEVELS = ("full", "basic")


@dataclass(frozen=True)
class Isolation:
    """Which layers to apply beyond the always-on ones (session, rlimits, scrubbed env, netns, uid).

    filesystem: :func:`~gen3deval.execute.sandbox.jail.enter_jail` (minimal read-only root + private
    quota'd tmpfs work folder). cgroup: one cgroup per program (memory, pids, cpu). seccomp: the
    seccomp filter (see ``SeccompPolicy``). work_mb: size of the private work tmpfs, MiB (one quota
    for all files together).
    """

    filesystem: bool = True
    cgroup: bool = True
    seccomp: bool = True
    work_mb: int = 64


def default_isolation() -> Isolation:
    """The isolation chosen by ``GEN3DEVAL_SANDBOX``: ``full`` (default, every layer) or ``basic``
    (no jail, cgroup or seccomp: the always-on layers only). Raises ConfigError for any other value."""
    raw = os.environ.get(ENV_VAR, "")
    value = raw.strip().lower() or "full"
    if value == "full":
        return Isolation()
    if value == "basic":
        return Isolation(filesystem=False, cgroup=False, seccomp=False)
    raise ConfigError(f"{ENV_VAR}={raw!r} is not valid: use one of {', '.join(SANDBOX_LEVELS)}")


def _cgroup_reason() -> str:
    try:
        from gen3deval.execute.sandbox import cgroups
    except ImportError:  # pragma: no cover - only while the module is missing
        return "no cgroup support in this build"
    return str(cgroups.cgroup_unavailable_reason())


def _jail_reason() -> str:
    from gen3deval.execute.sandbox.jail import jail_unavailable_reason

    reason = jail_unavailable_reason()
    return "not requested by the executor" if reason == "available" else reason


def _seccomp_reason() -> str:
    try:
        from gen3deval.execute.sandbox import seccomp
    except ImportError:  # pragma: no cover - only while the module is missing
        return "no seccomp support in this build"
    return str(seccomp.seccomp_unavailable_reason())


def sandbox_description(
    limits: Limits,
    *,
    uid: int | None,
    jail: bool | dict[str, Any] = False,
    cgroup: ProgramCgroup | None = None,
    seccomp: SeccompPolicy | None = None,
    isolation: Isolation | None = None,
    address_space: bool = True,
) -> dict[str, Any]:
    """What the parent set up for one program, for ``ExecResult.sandbox`` (never taken from the child).

    ``jail``: True (or a dict of details: ``work_mb`` gives ``work_quota_mb``, the rest is stored
    under ``"jail"``) when the program runs in the read-only minimal root. ``cgroup``: its program cgroup, if any. ``seccomp``: the policy installed,
    if any. ``isolation``: the layers that were asked for (to say *why* a layer is missing).
    Keys: network, user, rlimits, session, filesystem, work_quota_mb, cgroup, seccomp, processes.
    """
    from gen3deval.execute.sandbox.process import network_isolation_available

    iso = isolation if isolation is not None else Isolation()
    if limits.network:
        net = "allowed"
    else:
        net = "netns" if network_isolation_available() else "not isolated"
    info: dict[str, Any] = {
        "network": net,
        "user": f"uid {uid}" if uid is not None else "not isolated (not root)",
        "rlimits": "as,cpu,fsize,core,nproc" if address_space else "cpu,fsize,core,nproc",
        "session": "setsid",
    }
    if jail:
        details = dict(jail) if isinstance(jail, dict) else {}
        info["filesystem"] = "read-only minimal root (mount namespace)"
        info["work_quota_mb"] = int(details.pop("work_mb", iso.work_mb))
        info["processes"] = "hidden (procfs hidepid=2)"
        if details:
            info["jail"] = details
    else:
        why = "turned off" if not iso.filesystem else _jail_reason()
        info["filesystem"] = f"shared ({why})"
        info["work_quota_mb"] = None
        info["processes"] = "visible"
    if cgroup is not None:
        info["cgroup"] = cgroup.describe()
    else:
        why = "turned off" if not iso.cgroup else _cgroup_reason()
        info["cgroup"] = f"not available ({why}): rlimits only"
    if seccomp is not None:
        info["seccomp"] = seccomp.describe()
    else:
        info["seccomp"] = f"off ({'turned off' if not iso.seccomp else _seccomp_reason()})"
    return info


__all__ = ["ENV_VAR", "SANDBOX_LEVELS", "Isolation", "default_isolation", "sandbox_description"]
