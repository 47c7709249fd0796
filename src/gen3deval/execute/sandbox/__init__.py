"""OS-level sandbox primitives shared by the executors (no CadQuery or Node in here).

The boundary is the operating system, never Python. Layers (see docs/sandbox.md):

- :mod:`.process`: session/process group, rlimits, scrubbed environment, network namespace,
  throw-away uid, ``confine_current_process`` / ``run_limited`` and the exit classification;
- :mod:`.jail`: a minimal read-only root (mount namespace) with a private quota'd work tmpfs;
- :mod:`.cgroups`: one cgroup (memory, pids, cpu) per program;
- :mod:`.seccomp`: a seccomp filter refusing namespaces, mounts, ptrace and (optionally) fork/exec;
- :mod:`.policy`: which layers apply (``GEN3DEVAL_SANDBOX``) and the parent-side description;
- :mod:`.cleanup`: private temp folders and iterative removal of what a program leaves (no-jail mode);
- :mod:`.tripwire`: the Python audit hook that *classifies* violations (not a boundary);
- :mod:`.mounts`: the older private mount namespace of the warm workers.

Every name of the former ``sandbox.py`` module is re-exported here, so
``from gen3deval.execute import sandbox; sandbox.run_limited(...)`` keeps working.
"""

from __future__ import annotations

from gen3deval.execute.sandbox.cgroups import (
    ProgramCgroup,
    cgroup_support,
    cgroup_unavailable_reason,
    create_program_cgroup,
)
from gen3deval.execute.sandbox.cleanup import (
    WORLD_WRITABLE_DIRS,
    private_tmpdir,
    remove_tree,
    sweep_uid_files,
)
from gen3deval.execute.sandbox.jail import (
    WORK_DIR,
    JailSpec,
    enter_jail,
    gen3deval_mask_paths,
    gen3deval_ro_paths,
    jail_available,
    jail_unavailable_reason,
    node_ro_paths,
    python_ro_paths,
    system_ro_paths,
)
from gen3deval.execute.sandbox.mounts import private_mount_namespace
from gen3deval.execute.sandbox.policy import Isolation, default_isolation, sandbox_description
from gen3deval.execute.sandbox.process import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    SANDBOX_UID_BASE,
    ProcessOutcome,
    SandboxSetupError,
    apply_rlimits,
    become_subreaper,
    can_switch_user,
    classify_signal,
    confine_current_process,
    drop_privileges,
    isolate_network,
    kill_process_group,
    kill_uid_processes,
    limits_preexec,
    network_isolation_available,
    peak_rss_mb,
    run_limited,
    sandbox_uid,
    scrubbed_env,
    set_no_new_privs,
    set_parent_death_signal,
    signal_name,
    tail,
    uid_processes,
    unshare,
    wait_with_deadline,
)
from gen3deval.execute.sandbox.seccomp import (
    SeccompPolicy,
    install_seccomp,
    seccomp_available,
    seccomp_unavailable_reason,
)
from gen3deval.execute.sandbox.tripwire import FLAGGED_EVENTS, NETWORK_EVENTS, install_audit_tripwire

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "FLAGGED_EVENTS",
    "NETWORK_EVENTS",
    "SANDBOX_UID_BASE",
    "WORK_DIR",
    "WORLD_WRITABLE_DIRS",
    "Isolation",
    "JailSpec",
    "ProcessOutcome",
    "ProgramCgroup",
    "SandboxSetupError",
    "SeccompPolicy",
    "apply_rlimits",
    "become_subreaper",
    "can_switch_user",
    "cgroup_support",
    "cgroup_unavailable_reason",
    "classify_signal",
    "confine_current_process",
    "create_program_cgroup",
    "default_isolation",
    "drop_privileges",
    "enter_jail",
    "gen3deval_mask_paths",
    "gen3deval_ro_paths",
    "install_audit_tripwire",
    "install_seccomp",
    "isolate_network",
    "jail_available",
    "jail_unavailable_reason",
    "kill_process_group",
    "kill_uid_processes",
    "limits_preexec",
    "network_isolation_available",
    "node_ro_paths",
    "peak_rss_mb",
    "private_mount_namespace",
    "private_tmpdir",
    "python_ro_paths",
    "remove_tree",
    "run_limited",
    "sandbox_description",
    "sandbox_uid",
    "scrubbed_env",
    "seccomp_available",
    "seccomp_unavailable_reason",
    "set_no_new_privs",
    "set_parent_death_signal",
    "signal_name",
    "sweep_uid_files",
    "system_ro_paths",
    "tail",
    "uid_processes",
    "unshare",
    "wait_with_deadline",
]
