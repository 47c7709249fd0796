"""One cgroup per program, checked against the real kernel: the memory budget holds for all processes of a
program together, pids.max stops a fork loop, kill_all leaves nothing (checked in /proc), remove leaves no
directory, and two groups are independent. Skipped where no cgroup can be made (cgroup_support() is None)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gen3deval.execute.result import Limits
from gen3deval.execute.sandbox import cgroups

SUPPORT = cgroups.cgroup_support()
pytestmark = pytest.mark.skipif(
    SUPPORT is None, reason=f"no per-program cgroup here: {cgroups.cgroup_unavailable_reason()}"
)

# A parent that forks N children each touching MB MiB (b"\1" * n writes every page), holding it 1.5 s so
# they overlap; prints the children's exit statuses as JSON.
FORK_MEMORY = textwrap.dedent(
    """
    import json, os, sys, time
    n, mb = int(sys.argv[1]), int(sys.argv[2])
    kids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            block = b"\\1" * (mb << 20)
            time.sleep(1.5)
            os._exit(0 if len(block) else 1)
        kids.append(pid)
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids]))
    """
)

# Forks until fork fails (at most 50 children, blocked on a pipe until this parent exits); prints the count.
FORK_LOOP = textwrap.dedent(
    """
    import os
    r, w = os.pipe()
    count = 0
    for _ in range(50):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # EOF when the parent exits
            os._exit(0)
        count += 1
    print(count, flush=True)
    """
)

# Prints the pids of 5 detached grandchildren (own sessions, sleeping), then sleeps itself.
DETACHED = textwrap.dedent(
    """
    import os, sys, time
    pids = []
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
        pids.append(pid)
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(60)
    """
)


def _python(script: str, *args: str, group: cgroups.ProgramCgroup | None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=group.attach if group is not None else None,
    )


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, only waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def make_group():
    made: list[cgroups.ProgramCgroup] = []

    def make(limits: Limits) -> cgroups.ProgramCgroup:
        g = cgroups.create_program_cgroup(limits)
        assert g is not None, cgroups.cgroup_unavailable_reason()
        made.append(g)
        return g

    yield make
    for g in made:
        g.remove()


def test_memory_budget_holds_for_all_children_together(make_group):
    # Unconfined, 4 x 700 MiB (2.8 GB) all succeed: the per-process picture never sees the aggregate.
    free = subprocess.run([sys.executable, "-c", FORK_MEMORY, "4", "700"], capture_output=True, text=True)
    assert json.loads(free.stdout) == [0, 0, 0, 0]
    g = make_group(Limits(memory_mb=1024, processes=64))
    assert not g.oom_killed()
    p = _python(FORK_MEMORY, "4", "700", group=g)
    out, _ = p.communicate(timeout=60)
    codes = json.loads(out)
    assert codes.count(-signal.SIGKILL) >= 3, codes  # at most one 700 MiB child fits in 1 GiB
    assert g.oom_killed()
    peak = g.peak_mb()
    assert peak is not None and 700 <= peak <= 1024 + 1
    assert g.describe()["memory_mb"] == 1024


def test_pids_max_stops_a_fork_loop(make_group):
    free = subprocess.run([sys.executable, "-c", FORK_LOOP], capture_output=True, text=True, timeout=60)
    assert int(free.stdout) == 50
    g = make_group(Limits(processes=8))
    p = _python(FORK_LOOP, group=g)
    out, _ = p.communicate(timeout=60)
    assert int(out) <= 7  # the parent is one of the 8 tasks
    assert g.describe()["pids"] == 8


def test_kill_all_leaves_no_process_and_remove_no_directory(make_group):
    g = make_group(Limits())
    p = _python(DETACHED, group=g)
    assert p.stdout is not None
    grandchildren = [int(x) for x in p.stdout.readline().split()]
    assert len(grandchildren) == 5 and g.procs() == {p.pid, *grandchildren}
    assert g.kill_all() == 6
    p.wait(timeout=5)
    assert p.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 2
    while not all(_gone(q) for q in grandchildren) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(_gone(q) for q in grandchildren)
    assert g.procs() == set()
    paths = g.paths
    assert paths and all(os.path.isdir(d) for d in paths)
    g.remove()
    assert not any(os.path.exists(d) for d in paths)
    g.remove()  # idempotent
    assert g.oom_killed() is False and g.procs() == set()


def test_remove_kills_what_is_left(make_group):
    g = make_group(Limits())
    p = _python("import time; print(1, flush=True); time.sleep(60)", group=g)
    assert p.stdout is not None and p.stdout.readline().strip() == "1"
    g.remove()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not any(os.path.exists(d) for d in g.paths)


def test_two_groups_are_independent(make_group):
    g1 = make_group(Limits(memory_mb=1024))
    g2 = make_group(Limits(memory_mb=1024))
    assert set(g1.paths).isdisjoint(g2.paths)
    # 2 x 700 MiB would not fit one 1 GiB budget; in two budgets both succeed.
    p1 = _python(FORK_MEMORY, "1", "700", group=g1)
    p2 = _python(FORK_MEMORY, "1", "700", group=g2)
    assert json.loads(p1.communicate(timeout=60)[0]) == [0]
    assert json.loads(p2.communicate(timeout=60)[0]) == [0]
    assert not g1.oom_killed() and not g2.oom_killed()
    # Killing one group leaves the other running.
    s1 = _python("import time; print(1, flush=True); time.sleep(60)", group=g1)
    s2 = _python("import time; print(1, flush=True); time.sleep(60)", group=g2)
    for s in (s1, s2):
        assert s.stdout is not None and s.stdout.readline().strip() == "1"
    assert g1.kill_all() == 1
    assert s1.wait(timeout=5) == -signal.SIGKILL
    assert s2.poll() is None and g2.procs() == {s2.pid}
    g2.remove()
    assert s2.wait(timeout=5) == -signal.SIGKILL


def test_cpu_quota_is_one_core(make_group):
    g = make_group(Limits())
    if g.describe()["cpu"] != "1 core":
        pytest.skip("no cpu controller here")
    # Two busy processes for 1 s of wall time: at most ~1 s of CPU between them under a one-core quota.
    busy = "import os, time\nos.fork()\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
    script = busy + "import resource\nif os.getpid() != PARENT: os._exit(0)\nos.wait()\n"
    script += "r = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    script += "print(sum(x.ru_utime + x.ru_stime for x in r))"
    p = _python("import os\nPARENT = os.getpid()\n" + script, group=g)
    cpu_s = float(p.communicate(timeout=30)[0])
    assert cpu_s <= 1.3


def test_unlimited_memory_and_unique_names(make_group):
    g = make_group(Limits(memory_mb=0, processes=0))
    assert g.describe() == {"cgroup": SUPPORT, "memory_mb": None, "pids": None, "cpu": g.describe()["cpu"]}
    names = {os.path.basename(make_group(Limits()).paths[0]) for _ in range(5)}
    assert len(names) == 5
