"""Remote jobs through the engine (issue 10, performance): ~1,000 CSM jobs as ``gen3deval run`` runs them.

Run: ``.venv/bin/python benchmarks/bench_remote_engine.py [--images 167] [--concurrency 16] [--no-baseline]``
(about 1 min on 2 cores; ``--http10``, ``--profile FILE``: see ``--help``).

What it does: ``--images`` distinct 32x32 PNGs x the six ``csm-all`` configurations (167 x 6 = 1,002 jobs) run
through the real :class:`~gen3deval.engine.runner.Engine` in this process (``build_spec`` + ``build_engine`` +
``run``, as ``gen3deval run`` does): ``--jobs`` worker processes, protocol ``photo3d`` at ``--render-size``
(each job's mesh is loaded, stored and rendered in a worker), one SQLite store. The stand-in runs in a separate
process (``bench_remote.serve``: ``--fault-rate`` transient faults, session durations drawn from
``--duration``, HTTP/1.1 keep-alive unless ``--http10``). First (unless ``--no-baseline``) the client-only
benchmark (``bench_remote.py``) runs with as many jobs and the same total concurrency, in this invocation.

Reported:

- jobs: complete / failed (by reason) / lost (no ``generate`` row); the jobs table's final states; server-side
  sessions per job step (1, or 2 after a counted resubmission) and orphan sessions;
- per system: peak jobs in flight (jobs rows submitted..finished) and peak requests in flight (its client's
  limiter) vs ``concurrency``;
- CPU time of the engine process per thread while ``Engine.run`` runs (``/proc/self/task/TID/schedstat``, ns):
  the main thread (planning, store writes, dispatch, commits), the ``gen3deval-remote`` loop thread (HTTP
  client, job coroutines), the executor's threads (pickling to / from the workers) and the rest, per job;
  engine overhead = main + executor threads + the loop thread's excess over the client-only baseline;
- CPU workers while jobs are pending: stage run times in the workers (from the worker's own clock, via a proxy
  of the engine's executor) against the jobs rows' created..finished: mean busy workers, and how much of the
  time some CPU stage was waiting or running (work available) the workers were busy; a 2 s text timeline.

Exit status 1 when a job is lost, a step has more sessions than its resubmissions allow, or the run failed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import bench_remote  # noqa: E402
from gen3deval.engine.remote_jobs import RemoteJobs  # noqa: E402
from gen3deval.systems.csm import CSM_CONFIGS  # noqa: E402

LABELS = list(CSM_CONFIGS)


# --- per-thread CPU -------------------------------------------------------------------------------------
def thread_cpu_ns(tid: int) -> int | None:
    """CPU time of thread ``tid`` of this process (ns; schedstat, else utime+stime at 100 Hz); None when gone."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 10_000_000
    except (OSError, ValueError, IndexError):
        return None


class Threads:
    """Last CPU reading of every thread of this process seen so far, by native id (name kept)."""

    def __init__(self) -> None:
        self.start: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for name in os.listdir("/proc/self/task"):
            tid = int(name)
            ns = thread_cpu_ns(tid)
            if ns is None:
                continue
            self.start.setdefault(tid, ns)
            self.last[tid] = ns
            if tid in names:
                self.names[tid] = names[tid]

    def used_s(self, tid: int) -> float:
        return (self.last.get(tid, 0) - self.start.get(tid, 0)) / 1e9


# --- instrumentation of the engine (benchmark only: wrappers, no change to the engine) ---------------------
class ExecutorProbe:
    """Wraps the engine's executor: records (stage, submitted, started, finished) of every stage, with the
    worker's own times (``work`` returns them), and how many are outstanding."""

    def __init__(self, inner: Any, log: list[tuple[str, float, float, float]]) -> None:
        self._inner = inner
        self._log = log
        self._lock = threading.Lock()  # done callbacks run in the executor's thread
        self.outstanding = 0

    def submit(self, fn: Any, *args: Any, **kw: Any) -> Any:
        fut = self._inner.submit(fn, *args, **kw)
        stage, t_sub = str(args[0]), time.time()
        with self._lock:
            self.outstanding += 1

        def done(f: Any) -> None:
            with self._lock:
                self.outstanding -= 1
            try:
                _result, started, finished, _tries = f.result()
            except Exception:
                return
            self._log.append((stage, t_sub, started, finished))

        fut.add_done_callback(done)
        return fut

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CpuTimer:
    """Wraps a function: calls and CPU time of the calling thread inside it (``time.thread_time``: waits in
    it, such as a blocking ``wait``, cost nothing)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.calls, self.cpu_s = fn, 0, 0.0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        t0 = time.thread_time()
        try:
            return self.fn(*args, **kw)
        finally:
            self.cpu_s += time.thread_time() - t0
            self.calls += 1


class Probe:
    """What the sampler thread and the wrappers record while the engine runs."""

    def __init__(self) -> None:
        self.timers: dict[str, CpuTimer] = {}
        self.remote: RemoteJobs | None = None
        self.remote_tid: int | None = None
        self.peak_requests: dict[str, int] = {}
        self.threads = Threads()
        self.stages: list[tuple[str, float, float, float]] = []
        self.executors: list[ExecutorProbe] = []
        self.samples: list[
            tuple[float, int, int]
        ] = []  # (time, CPU stages waiting in the engine, outstanding)
        self.stop = threading.Event()

    def install(self, engine: Any) -> None:
        make = engine._make_executor

        def make_executor() -> Any:
            ex = ExecutorProbe(make(), self.stages)
            self.executors.append(ex)
            return ex

        engine._make_executor = make_executor
        # Main-thread pieces (runner.py): the loop's wait() on every future in flight, the commits of stage
        # results (artifacts + store row), the writes of job rows (RemoteJobs.drain).
        import httpcore._synchronization as hsync

        import gen3deval.engine.runner as runner

        self.timers["wait"] = runner.wait = CpuTimer(runner.wait)
        self.timers["commit"] = engine._commit = CpuTimer(engine._commit)
        self.timers["drain"] = CpuTimer(RemoteJobs.drain)
        # httpcore asks which async library runs at every lock/event it makes: without sniffio installed,
        # that is a failed import (a sys.path search) each time. Counted (loop thread).
        self.timers["sniff"] = hsync.current_async_library = CpuTimer(hsync.current_async_library)
        probe = self
        init, close = RemoteJobs.__init__, RemoteJobs.close
        drain = self.timers["drain"]
        RemoteJobs.drain = lambda self, store: drain(self, store)

        def init_(self: RemoteJobs, *a: Any, **kw: Any) -> None:
            init(self, *a, **kw)
            probe.remote, probe.remote_tid = self, self._thread.native_id

        def close_(self: RemoteJobs, store: Any | None = None) -> None:
            probe.threads.sample()  # the loop thread's CPU before it ends
            probe.peak_requests = {k: c.api.limiter.peak_in_flight for k, c in self._clients.items()}
            close(self, store)

        RemoteJobs.__init__, RemoteJobs.close = init_, close_

    def run_sampler(self, engine: Any, every_s: float = 0.1) -> None:
        while not self.stop.wait(every_s):
            self.threads.sample()
            ready = len(getattr(engine, "ready", ()))
            out = sum(ex.outstanding for ex in self.executors)
            self.samples.append((time.time(), ready, out))


# --- analysis -------------------------------------------------------------------------------------------
def busy_at(intervals: list[tuple[float, float]], t: float) -> int:
    return sum(1 for a, b in intervals if a <= t < b)


def overlap(intervals: list[tuple[float, float]], a: float, b: float) -> float:
    """Seconds of ``intervals`` (summed, overlapping ones counted each) inside [a, b)."""
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in intervals)


def session_check(jobs: list[Any], sessions: list[dict[str, Any]], digests: dict[str, str]) -> dict[str, Any]:
    """Map every server-side session to its job (image via the data URL or the reused asset; configuration via
    type and settings; a chat's second step via its chat asset) and count sessions per job step."""
    case_of_digest = {d: c for c, d in digests.items()}
    asset_case: dict[str, str] = {}
    for s in sessions:
        if s["digest"] in case_of_digest:
            asset_case[s["input_asset"]] = case_of_digest[s["digest"]]
    by_cfg = {
        (c["job_type"], c["geometry_model"], c["texture_model"]): label
        for label, c in CSM_CONFIGS.items()
        if c["job_type"] == "image_to_3d"
    }
    chat_of_asset = {s["chat_asset"]: s for s in sessions if s["chat_asset"]}
    per_step: Counter[tuple[str, str, int]] = Counter()
    orphans = 0
    for s in sessions:
        chat = chat_of_asset.get(s["input_asset"])
        if chat is not None:
            case, label, step = asset_case.get(chat["input_asset"]), "csm-chat", 2
        else:
            case, step = asset_case.get(s["input_asset"]), 1
            if s["type"] == "chat_to_3d":
                label = "csm-chat"
            elif s["type"] == "image_to_kit":
                label = "csm-kit"
            else:
                label = by_cfg.get((s["type"], s["geometry"], s["texture"]), "?")
        if case is None or label == "?":
            orphans += 1
            continue
        per_step[(case, label, step)] += 1
    resub: Counter[tuple[str, str]] = Counter()
    tracked: set[str] = set()
    for j in jobs:
        resub[(j.case, j.system)] += j.resubmitted
        tracked.update((j.handle or {}).get("sessions") or [])
    problems = []
    for (case, label, step), n in per_step.items():
        if n > 1 + min(1, resub[(case, label)]):
            problems.append(f"{case} {label} step {step}: {n} sessions, {resub[(case, label)]} resubmitted")
    unknown = tracked - {s["id"] for s in sessions}
    if unknown:
        problems.append(f"{len(unknown)} tracked sessions unknown to the server")
    return {
        "per_step": Counter(per_step.values()),
        "orphans": orphans,
        "problems": problems,
        "sessions": len(sessions),
        "untracked": len({s["id"] for s in sessions} - tracked),
    }


def peak_concurrent(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


def make_images(n: int, folder: Path) -> dict[str, str]:
    """``n`` distinct 32x32 PNGs ``img_00000.png``...; returns {case id: sha1 of the file}."""
    import hashlib

    from PIL import Image

    folder.mkdir(parents=True)
    out = {}
    for i in range(n):
        img = Image.new("RGB", (32, 32), (i % 256, (i // 256) % 256, 77))
        for k in range(8):  # a small shape so the photo is not flat
            img.putpixel((8 + k, 8 + (i * 7 + k) % 16), (255 - i % 256, 40 * k % 256, 200))
        p = folder / f"img_{i:05d}.png"
        img.save(p)
        out[p.stem] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=167, help="distinct photos; jobs = 6 x images")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight, per system")
    ap.add_argument("--rps", type=float, default=1000.0, help="request starts per second, per system")
    ap.add_argument("--jobs", type=int, default=2, help="CPU worker processes")
    ap.add_argument("--render-size", type=int, default=128)
    ap.add_argument("--fault-rate", type=float, default=0.10)
    ap.add_argument("--duration", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN_S", "MAX_S"))
    ap.add_argument("--request-latency", type=float, nargs=2, default=(0.005, 0.05), metavar=("MIN", "MAX"))
    ap.add_argument("--http10", action="store_true", help="stand-in closes every connection (HTTP/1.0)")
    ap.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the client-only benchmark first (default; --no-baseline skips it)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--profile", metavar="FILE", help="cProfile (thread CPU time) the main thread during run() into FILE"
    )
    args = ap.parse_args(argv)
    n_jobs = 6 * args.images

    base: dict[str, Any] = {}
    if args.baseline:
        argv_b = [
            f"--jobs={n_jobs}",
            f"--concurrency={6 * args.concurrency}",
            f"--rps={args.rps}",
            f"--fault-rate={args.fault_rate}",
            f"--seed={args.seed}",
            "--duration",
            *map(str, args.duration),
            "--request-latency",
            *map(str, args.request_latency),
            *(["--http10"] if args.http10 else []),
        ]
        print("# Baseline: bench_remote.py " + " ".join(argv_b) + "\n")
        bench_remote.main(argv_b, base)
        print()

    opts = {
        "fault_rate": args.fault_rate,
        "duration": args.duration,
        "request_latency": args.request_latency,
        "seed": args.seed,
        "http10": args.http10,
    }
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=bench_remote.serve, args=(child, opts), daemon=True)
    proc.start()
    info = parent.recv()

    from gen3deval.config import build_spec
    from gen3deval.engine.build import build_engine
    from gen3deval.engine.jobs_table import load_jobs
    from gen3deval.engine.store import Store

    settings = (
        f"concurrency={args.concurrency},rps={args.rps:g},poll_interval=0.5,poll_max=2,backoff=0.2,"
        "request_timeout=10,timeout_min=3"
    )
    with tempfile.TemporaryDirectory(prefix="bench_remote_engine_") as tmp_s:
        tmp = Path(tmp_s)
        digests = make_images(args.images, tmp / "images")
        os.environ["CSM_API_KEY"] = info["api_key"]
        os.environ["CSM_BASE_URL"] = info["base_url"]
        spec = build_spec(
            {
                "suite": f"images:{tmp / 'images'}",
                "systems": [f"csm-all:{settings}"],
                "protocol": {"name": "photo3d", "render_size": args.render_size},
                "jobs": args.jobs,
                "out": str(tmp / "run"),
            }
        )
        engine, suites = build_engine(spec)
        probe = Probe()
        probe.install(engine)
        main_tid = threading.main_thread().native_id or 0
        sampler = threading.Thread(
            target=probe.run_sampler, args=(engine,), name="bench-sampler", daemon=True
        )
        load0 = os.getloadavg()
        probe.threads.sample()
        sampler.start()
        cpu0, wall0 = time.process_time(), time.time()
        error = None
        prof = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile(time.thread_time)  # CPU of this thread, not waits
            prof.enable()
        try:
            result = engine.run(suites=suites, spec={"bench": True})
        except Exception as exc:  # reported, then exit status 1
            error = f"{type(exc).__name__}: {exc}"
            result = None
        wall1 = time.time()
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        probe.threads.sample()
        cpu_s, wall_s = time.process_time() - cpu0, wall1 - wall0
        probe.stop.set()
        sampler.join()
        load1 = os.getloadavg()
        with Store(tmp / "run", readonly=True) as store:
            jobs = load_jobs(store)
            stage_rows = store.db.execute(
                'SELECT "case", system, stage, status, error_class, error FROM stages'
            ).fetchall()
    parent.send("stop")
    server = parent.recv()
    proc.join(10)

    # -- outcomes ---------------------------------------------------------------------------------------
    gen = {(c, s): (st, ec, err) for c, s, stage, st, ec, err in stage_rows if stage == "generate"}
    rendered = {(c, s) for c, s, stage, st, _ec, _e in stage_rows if stage == "render" and st == "done"}
    expected = [(c, label) for c in digests for label in LABELS]
    complete = sum(1 for k in expected if gen.get(k, ("",))[0] == "done" and k in rendered)
    lost = [k for k in expected if k not in gen]
    failed: Counter[tuple[str, str]] = Counter()
    for k in expected:
        st, ec, err = gen.get(k, ("done", "", ""))
        if st != "done":
            failed[(ec or "", (err or "")[:200])] += 1
    states = Counter(j.state for j in jobs)
    sub = session_check(jobs, server["sessions"], digests)

    # -- in flight --------------------------------------------------------------------------------------
    spans_by_sys: dict[str, list[tuple[float, float]]] = defaultdict(list)
    pending: list[tuple[float, float]] = []
    for j in jobs:
        if j.submitted is not None:
            spans_by_sys[j.system].append((j.submitted, j.finished or wall1))
        if j.created != float("inf"):
            pending.append((j.created, j.finished or wall1))
    peak_jobs = {s: peak_concurrent(v) for s, v in spans_by_sys.items()}

    # -- CPU per thread ---------------------------------------------------------------------------------
    th = probe.threads
    main_s = th.used_s(main_tid)
    loop_s = th.used_s(probe.remote_tid) if probe.remote_tid else 0.0
    sampler_s = th.used_s(sampler.native_id or -1)
    execs = [t for t, name in th.names.items() if "Executor" in name or "QueueFeeder" in name]
    exec_s = sum(th.used_s(t) for t in execs)
    other_s = cpu_s - main_s - loop_s - exec_s - sampler_s
    per = 1000.0 / n_jobs
    base_ms = base.get("remote_ms_per_job")
    loop_excess = (loop_s * per - base_ms) if base_ms is not None else None
    overhead = main_s * per + exec_s * per + max(0.0, loop_excess if loop_excess is not None else 0.0)

    # -- workers vs pending jobs ------------------------------------------------------------------------
    work = [(a, b) for _st, _sub, a, b in probe.stages]
    t_first = min((a for a, _ in pending), default=wall0)
    t_last = max((b for _, b in pending), default=wall0)
    step = 0.05
    pend_t = busy_sum = 0.0
    avail_t = avail_busy = avail_cap = 0.0
    samples = probe.samples
    si = 0
    t = t_first
    while t < t_last:
        npend = busy_at(pending, t)
        while si + 1 < len(samples) and samples[si + 1][0] <= t:
            si += 1
        avail = samples[si][1] + samples[si][2] if samples else 0
        if npend:
            busy = min(args.jobs, busy_at(work, t))
            pend_t += step
            busy_sum += busy * step
            if avail:
                avail_t += step
                avail_busy += busy * step
                avail_cap += min(args.jobs, avail) * step
        t += step
    timeline = []
    bucket = 2.0
    t = wall0
    while t < wall1:
        b = t + bucket
        timeline.append(
            (
                t - wall0,
                round(overlap(pending, t, b) / bucket),
                overlap(work, t, b) / bucket,
                max((s[1] + s[2] for s in samples if t <= s[0] < b), default=0),
            )
        )
        t = b
    stage_cpu: dict[str, float] = defaultdict(float)
    stage_n: Counter[str] = Counter()
    for st, _s, a, b in probe.stages:
        stage_cpu[st] += b - a
        stage_n[st] += 1

    # -- report -----------------------------------------------------------------------------------------
    reqs = server["requests"]
    faults = sum(1 for r in reqs if r[2])
    tm = probe.timers
    main_rest = main_s - tm["wait"].cpu_s - tm["commit"].cpu_s - tm["drain"].cpu_s
    rows = [
        ("jobs (images x csm-all)", f"{n_jobs} ({args.images} x {len(LABELS)})"),
        ("complete / failed / lost (pipelines)", f"{complete} / {sum(failed.values())} / {len(lost)}"),
        ("jobs table: final states", ", ".join(f"{k} {v}" for k, v in sorted(states.items()))),
        (
            "server sessions per job step (count of steps)",
            ", ".join(f"{k}: {v}" for k, v in sorted(sub["per_step"].items())),
        ),
        ("resubmissions (after MaybeSentError)", f"{sum(j.resubmitted for j in jobs)}"),
        (
            "sessions on the server / not tracked by a job row / orphans",
            f"{sub['sessions']} / {sub['untracked']} / {sub['orphans']}",
        ),
        (
            "requests seen by the server / faults injected",
            f"{len(reqs)} / {faults} ({faults / max(1, len(reqs)):.1%})",
        ),
        ("concurrency (requests in flight, per system)", f"{args.concurrency}"),
        (
            "peak requests in flight per system (client limiter)",
            ", ".join(f"{k} {probe.peak_requests.get(k, 0)}" for k in LABELS),
        ),
        (
            "peak jobs in flight per system (submitted, not finished)",
            ", ".join(f"{k} {peak_jobs.get(k, 0)}" for k in LABELS)
            + f"; all systems: {peak_concurrent([s for v in spans_by_sys.values() for s in v])}"
            + f"; engine coroutines: {probe.remote.peak_in_flight if probe.remote else 0}",
        ),
        ("stand-in peak requests in flight (all systems)", f"{server['peak_in_flight']}"),
        ("engine process CPU during run()", f"{cpu_s:.2f} s = {cpu_s * per:.2f} ms/job"),
        ("  main thread (plan, store, dispatch, commits)", f"{main_s:.2f} s = {main_s * per:.2f} ms/job"),
        (
            "    of which wait() for workers and the remote jobs' bell (runner.py)",
            f"{tm['wait'].cpu_s * per:.2f} ms/job ({tm['wait'].calls} calls, "
            f"{1e6 * tm['wait'].cpu_s / max(1, tm['wait'].calls):.0f} us each)",
        ),
        (
            "    of which commits of stage results (artifacts + row)",
            f"{tm['commit'].cpu_s * per:.2f} ms/job ({tm['commit'].calls} stages)",
        ),
        (
            "    of which job rows written (RemoteJobs.drain)",
            f"{tm['drain'].cpu_s * per:.2f} ms/job ({tm['drain'].calls} calls)",
        ),
        ("    rest (planning, dispatch, progress)", f"{main_rest * per:.2f} ms/job"),
        ("  gen3deval-remote loop thread (HTTP client, jobs)", f"{loop_s:.2f} s = {loop_s * per:.2f} ms/job"),
        (
            "    of which httpcore's failed `import sniffio` per lock",
            f"{tm['sniff'].cpu_s * per:.2f} ms/job ({tm['sniff'].calls / n_jobs:.0f} calls/job, "
            f"{1e6 * tm['sniff'].cpu_s / max(1, tm['sniff'].calls):.0f} us each)",
        ),
        (
            "  executor threads (to/from workers: pickling)",
            f"{exec_s:.2f} s = {exec_s * per:.2f} ms/job ({len(execs)} threads)",
        ),
        ("  other threads (to_thread reads, ...) / sampler", f"{other_s:.2f} s / {sampler_s:.2f} s"),
        (
            "client-only baseline, remote layer (same invocation)",
            f"{base_ms:.2f} ms/job" if base_ms is not None else "not run (--no-baseline)",
        ),
        (
            "engine overhead: main + executor threads + loop excess over baseline",
            f"{overhead:.2f} ms/job"
            + (f" (loop excess {loop_excess:+.2f} ms/job)" if loop_excess is not None else " (no baseline)"),
        ),
        (
            "worker stages: count, mean wall in the worker",
            ", ".join(
                f"{k} {stage_n[k]} x {1000 * stage_cpu[k] / stage_n[k]:.0f} ms" for k in sorted(stage_n)
            ),
        ),
        (
            "while >= 1 job pending: time, mean busy workers",
            f"{pend_t:.1f} s, {busy_sum / max(pend_t, 1e-9):.2f} of {args.jobs}",
        ),
        (
            "  of that, CPU work available: time, busy workers / possible",
            f"{avail_t:.1f} s, {avail_busy / max(avail_cap, 1e-9):.1%} "
            f"({avail_busy / max(avail_t, 1e-9):.2f} busy on average)",
        ),
        ("wall time of run()", f"{wall_s:.1f} s"),
        (
            "load average 1/5/15 min: before / after",
            f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} / {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} "
            f"({os.cpu_count()} CPUs)",
        ),
    ]
    print(f"## Remote jobs through the engine: {n_jobs} CSM jobs against the loopback stand-in\n")
    print(
        f"jobs {args.jobs}, photo3d render_size {args.render_size}, per system concurrency {args.concurrency} "
        f"rps {args.rps:g}, poll 0.5 s x1.5 to 2 s, sessions {args.duration[0]:g}-{args.duration[1]:g} s, "
        f"faults {args.fault_rate:.0%}, {'HTTP/1.0' if args.http10 else 'HTTP/1.1 keep-alive'}"
        "\n"
    )
    print("| metric | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(
        "\nTimeline (2 s buckets): t, jobs pending (mean), workers busy (mean), CPU stages waiting or running (max)"
    )
    for t0, npend, busy, avail in timeline:
        bar = "#" * round(10 * busy / args.jobs)
        print(f"  {t0:6.1f}s  pending {npend:5d}  busy {busy:4.2f} {bar:<10}  cpu-work {avail}")
    print()
    if error:
        print(f"RUN FAILED: {error}")
    for (ec, why), c in failed.most_common():
        print(f"- {c} x failed [{ec}]: {why}")
    for p in sub["problems"][:20]:
        print(f"PROBLEM: {p}")
    print(
        f"Summary: {complete}/{n_jobs} complete, {sum(failed.values())} failed, {len(lost)} lost; "
        f"engine overhead {overhead:.2f} ms/job (target < 10); "
        f"requests in flight per system reached concurrency: "
        f"{sum(1 for k in LABELS if probe.peak_requests.get(k, 0) >= args.concurrency)}/{len(LABELS)} systems; "
        f"wall {wall_s:.1f} s."
    )
    ok = error is None and not lost and not sub["problems"] and result is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
