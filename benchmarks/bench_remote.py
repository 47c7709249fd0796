"""Remote-job layer benchmark (issue 10, phase 1): N CSM jobs through ``CsmClient.run_job`` against the stand-in.

Run: ``.venv/bin/python benchmarks/bench_remote.py [--jobs 1000] [--concurrency 64] [--rps 1000]``.

What it does: ``--jobs`` jobs (round robin over the six ``CSM_CONFIGS``; one distinct 4x4 PNG per job, sent as
a ``data:`` URL, so that every server-side session maps back to its job) run concurrently with asyncio through
ONE shared :class:`CsmClient` (one :class:`RemotePolicy`, one request limiter). The loopback stand-in
(``tests/fakes/csm_server.py``) runs in a separate process, so this process's CPU time is the client's alone.
It is configured with:

- simulated session durations drawn uniformly from ``--duration`` (default 1-5 s) per session;
- a small per-request latency (``--request-latency``, default 5-50 ms, a handler-thread sleep);
- ~``--fault-rate`` (default 10 %) transient faults per request, split over 429 (``Retry-After: 1``), 503 and
  dropped connections on submit and poll, and 503 / dropped / truncated bodies on downloads;
- a listen backlog of 512 (the stdlib default of 5 would make the stand-in, not the client, the bottleneck);
- HTTP/1.1 keep-alive (a real API keeps connections open; the stand-in's handler speaks HTTP/1.0, closing every
  connection after one answer, which makes the client pay a TCP connect per request): ``--http10`` keeps the
  stand-in's HTTP/1.0 for comparison. Faults that cut an answer (drop, truncate) still close the connection.

The policy is production's except for scaled-down waits: ``poll_interval_s`` 0.5 growing x1.5 to 2 s,
backoff 0.2 s doubling to 2 s, request timeout 10 s, ``retries`` 3.

Reported (markdown table + summary): jobs complete / failed (grouped by reason) / lost; server-side sessions
per job step (must be 1, except resubmissions after ``MaybeSentError``, counted per job); peak requests in
flight (client limiter and the stand-in's own counter) vs ``concurrency``; peak jobs in flight (submitted, not
finished); request rate vs ``rps``; client CPU per job (``time.process_time`` of this process / jobs), split
into GLB verification + kit assembly (mesh loading that the engine needs anyway) and the rest (HTTP, JSON,
asyncio, retries: the remote layer's overhead); wall time; load average. Exit status 1 when a job was lost
(no result, crash, hung) or a job step has more server-side sessions than its counted resubmissions allow.

This measures the client layer alone (no engine, no store, no workers): it is the baseline that
``benchmarks/bench_remote_engine.py --baseline`` runs first to compare the engine's remote-job thread against.
GLB verification here is the client's default (load each mesh); the engine verifies only the container and loads
the mesh in a worker, hence its own row.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import hashlib
import io
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the stand-in, imported as the tests import it (fakes.csm_server)

import gen3deval.systems.csm as csm_mod  # noqa: E402
from fakes.csm_server import FakeCsm, FakeCsmConfig, Fault, _Handler, _Session  # noqa: E402
from gen3deval.remote.errors import RemoteError  # noqa: E402
from gen3deval.remote.policy import RemotePolicy  # noqa: E402
from gen3deval.systems.csm import CSM_CONFIGS, CsmClient  # noqa: E402

CONFIG_NAMES = list(CSM_CONFIGS)


# --- the stand-in, instrumented (runs in a child process) -------------------------------------------------
class _BacklogServer(ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True


class _CountingHandler(_Handler):
    """The stand-in's handler, counting requests in flight (from request line read to answer sent)."""

    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length (see --http10)
    # Headers and body are two writes: with Nagle on, a kept-alive connection stalls ~40 ms on the body
    # (delayed ACK), which a real server does not.
    disable_nagle_algorithm = True

    def _handle(self, method: str) -> None:
        fake = self.fake
        assert isinstance(fake, BenchCsm)
        t0 = time.monotonic()
        with fake._lock:
            fake.in_flight += 1
            fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
        try:
            super()._handle(method)
        finally:
            with fake._lock:
                fake.in_flight -= 1
                fake.spans.append((t0, time.monotonic()))


class BenchCsm(FakeCsm):
    """FakeCsm with per-session durations drawn from ``duration`` (s), a deep backlog and a concurrency count."""

    def __init__(self, config: FakeCsmConfig, duration: tuple[float, float]) -> None:
        super().__init__(config)
        self._duration = duration
        self._dur_rng = random.Random(config.seed + 1)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.spans: list[tuple[float, float]] = []

    def start(self, http10: bool = False) -> None:
        attrs: dict[str, Any] = {"fake": self}
        if http10:
            attrs["protocol_version"] = "HTTP/1.0"
        handler = type("Handler", (_CountingHandler,), attrs)
        for _ in range(2 if self.config.separate_file_origin else 1):
            server = _BacklogServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._servers.append(server)

    def _create(self, body: Any) -> _Session:
        sess = super()._create(body)
        with self._lock:  # before the answer is sent, so no poll can see the default duration
            sess.duration = self._dur_rng.uniform(*self._duration)
        return sess

    def summary(self) -> dict[str, Any]:
        """Everything the parent checks, as plain data (sent over a pipe)."""
        with self._lock:
            sessions = []
            for s in self.sessions.values():
                if s.type == "chat_to_3d":
                    image = s.body["messages"][0]["images"][0]
                else:
                    image = s.body["input"]["image"]
                digest = None
                if isinstance(image, str) and image.startswith("data:"):
                    digest = hashlib.sha1(base64.b64decode(image.split(";base64,", 1)[1])).hexdigest()
                settings = {} if s.type == "chat_to_3d" else s.body["input"].get("settings", {})
                sessions.append(
                    {
                        "id": s.id,
                        "type": s.type,
                        "geometry": settings.get("geometry_model"),
                        "texture": settings.get("texture_model"),
                        "digest": digest,
                        "input_asset": s.input_asset,
                        "chat_asset": s.chat_asset,
                    }
                )
            reqs = [(r.kind, r.status, r.fault, r.time) for r in self.requests]
            return {
                "sessions": sessions,
                "requests": reqs,
                "peak_in_flight": self.peak_in_flight,
                "spans": list(self.spans),
            }


def _faults(rate: float) -> list[Fault]:
    """~``rate`` of each path kind's requests faulted (rules are tried in order, so probabilities compound)."""
    p = rate / 3.0
    return [
        Fault("429", "submit", probability=p, retry_after=1.0),
        Fault("503", "submit", probability=p),
        Fault("drop", "submit", probability=p),
        Fault("429", "poll", probability=p, retry_after=1.0),
        Fault("503", "poll", probability=p),
        Fault("drop", "poll", probability=p),
        Fault("503", "download", probability=p),
        Fault("drop", "download", probability=p),
        Fault("truncate", "download", probability=p),
    ]


def serve(conn: Connection, opts: dict[str, Any]) -> None:
    """Child process: run the stand-in until told to stop, then send back its summary and CPU time."""
    config = FakeCsmConfig(
        latency_s=tuple(opts["request_latency"]),
        faults=_faults(opts["fault_rate"]),
        seed=opts["seed"],
    )
    server = BenchCsm(config, tuple(opts["duration"]))
    server.start(http10=bool(opts.get("http10")))
    cpu0 = time.process_time()
    conn.send({"base_url": server.base_url, "api_key": config.api_key})
    conn.recv()
    out = server.summary()
    out["cpu_s"] = time.process_time() - cpu0
    server.stop()
    conn.send(out)


# --- client side -----------------------------------------------------------------------------------------
_JOB_RESUB: contextvars.ContextVar[list[int]] = contextvars.ContextVar("job_resub")


class CountingCsmClient(CsmClient):
    """CsmClient whose ``resubmitted`` counter is also attributed to the asyncio task (job) that resubmitted."""

    _resub_total = 0

    @property
    def resubmitted(self) -> int:
        return self._resub_total

    @resubmitted.setter
    def resubmitted(self, value: int) -> None:
        delta = value - self._resub_total
        self._resub_total = value
        box = _JOB_RESUB.get(None)
        if box is not None and delta > 0:
            box[0] += delta

    async def fetch(
        self, poll_result: Any, dest_dir: Any, *, verify: Any = None, assemble: bool = True
    ) -> Any:
        # CsmClient.fetch binds its default ``verify`` at definition time: pass the (timed) module-level one.
        return await super().fetch(
            poll_result, dest_dir, verify=verify or csm_mod.verify_glb, assemble=assemble
        )


class _Timed:
    """Wraps a function and sums the CPU time of the calling thread spent in it (thread-safe)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.cpu_s = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kw: Any) -> Any:
        t0 = time.thread_time()
        try:
            return self.fn(*args, **kw)
        finally:
            with self._lock:
                self.cpu_s += time.thread_time() - t0
                self.calls += 1


def make_images(n: int, folder: Path) -> tuple[list[Path], list[str]]:
    """``n`` distinct 4x4 PNGs (colour and one pixel encode the index); returns paths and sha1 digests."""
    from PIL import Image

    paths, digests = [], []
    for i in range(n):
        img = Image.new("RGB", (4, 4), (i % 256, (i // 256) % 256, 77))
        img.putpixel((0, 0), (i * 7 % 256, i * 13 % 256, i * 29 % 256))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data = buf.getvalue()
        p = folder / f"img_{i:05d}.png"
        p.write_bytes(data)
        paths.append(p)
        digests.append(hashlib.sha1(data).hexdigest())
    assert len(set(digests)) == n, "images must be distinct"
    return paths, digests


async def run_jobs(
    client: CsmClient, images: list[Path], out_dir: Path, overall_s: float
) -> tuple[list[dict[str, Any]], int]:
    """Run every job concurrently; returns one record per job and the peak of jobs submitted-not-finished."""
    n = len(images)
    records: list[dict[str, Any]] = [{"status": "lost", "handles": [], "resub": 0} for _ in range(n)]
    live = {"now": 0, "peak": 0}

    async def one(i: int) -> None:
        rec = records[i]
        name = CONFIG_NAMES[i % len(CONFIG_NAMES)]
        cfg = CSM_CONFIGS[name]
        rec["config"] = name
        box = [0]
        _JOB_RESUB.set(box)
        submitted = False

        def on_handle(h: dict[str, Any]) -> None:
            nonlocal submitted
            rec["handles"].append(h)
            if not submitted:
                submitted = True
                live["now"] += 1
                live["peak"] = max(live["peak"], live["now"])

        t0 = time.monotonic()
        try:
            result, paths = await client.run_job(
                cfg["job_type"], images[i], cfg, out_dir / f"job_{i:05d}", on_handle=on_handle
            )
            rec["status"] = "complete" if result.status == "done" else "failed"
            rec["reason"] = result.message
            rec["files"] = len(paths)
        except RemoteError as exc:  # retries exhausted, final error, timeout: failed with a reason
            rec["status"] = "failed"
            rec["reason"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug: the job is lost
            rec["status"] = "lost"
            rec["reason"] = f"crash {type(exc).__name__}: {exc}"
        finally:
            rec["resub"] = box[0]
            rec["time_s"] = time.monotonic() - t0
            if submitted:
                live["now"] -= 1

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=overall_s)
    for t in pending:  # hung: reported lost
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for rec in records:
        if rec["status"] == "lost" and "reason" not in rec:
            rec["reason"] = f"no result within {overall_s:g} s"
    return records, live["peak"]


# --- analysis --------------------------------------------------------------------------------------------
def check_submissions(
    records: list[dict[str, Any]], digests: list[str], sessions: list[dict[str, Any]]
) -> dict[str, Any]:
    """Map every server-side session to its job (input image digest; chat step 2 via the chat asset) and count.

    A job step (its first session, or a chat's second) must have exactly one session on the server, or two
    when that job counted a resubmission after MaybeSentError; every session the client tracks must exist.
    """
    job_of_digest = {d: i for i, d in enumerate(digests)}
    by_id = {s["id"]: s for s in sessions}
    chat_job = {s["chat_asset"]: job_of_digest.get(s["digest"]) for s in sessions if s["chat_asset"]}
    per_step: dict[tuple[int, int], int] = Counter()
    orphans = 0
    for s in sessions:
        if s["digest"] is not None and s["digest"] in job_of_digest:
            per_step[(job_of_digest[s["digest"]], 1)] += 1
        elif (j := chat_job.get(s["input_asset"])) is not None:
            per_step[(j, 2)] += 1
        else:
            orphans += 1
    problems: list[str] = []
    for i, rec in enumerate(records):
        tracked = rec["handles"][-1]["sessions"] if rec["handles"] else []
        for sid in tracked:
            if sid not in by_id:
                problems.append(f"job {i}: tracked session {sid} unknown to the server")
        steps = {k for (j, k) in per_step if j == i}
        extra = sum(per_step[(i, k)] - 1 for k in steps)
        if extra > rec["resub"] or any(per_step[(i, k)] > 2 for k in steps):
            problems.append(f"job {i}: {extra} extra server sessions, {rec['resub']} counted resubmissions")
        if rec["status"] == "complete" and len(tracked) != len(steps):
            problems.append(f"job {i}: {len(tracked)} tracked sessions, {len(steps)} steps on the server")
    if orphans:
        problems.append(f"{orphans} server sessions belong to no job")
    return {
        "per_step": Counter(per_step.values()),
        "problems": problems,
        "orphans": orphans,
        "sessions": len(sessions),
    }


def peak_rate(times: list[float], window: float = 1.0) -> float:
    """Most request starts in any ``window`` seconds, per second."""
    ts = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while t - ts[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best / window


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main(argv: list[str] | None = None, summary: dict[str, Any] | None = None) -> int:
    """Run the benchmark and print its table; ``summary`` (when given) receives the key numbers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rps", type=float, default=1000.0)
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--poll-interval", type=float, default=0.5)
    ap.add_argument("--poll-max", type=float, default=2.0)
    ap.add_argument("--fault-rate", type=float, default=0.10)
    ap.add_argument("--duration", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN_S", "MAX_S"))
    ap.add_argument(
        "--request-latency", type=float, nargs=2, default=(0.005, 0.05), metavar=("MIN_S", "MAX_S")
    )
    ap.add_argument("--timeout-s", type=float, default=170.0, help="overall limit; unfinished jobs are lost")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--http10", action="store_true", help="stand-in closes every connection (HTTP/1.0)")
    args = ap.parse_args(argv)

    opts = {k: getattr(args, k) for k in ("fault_rate", "duration", "request_latency", "seed", "http10")}
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(child, opts), daemon=True)
    proc.start()
    info = parent.recv()

    policy = RemotePolicy(
        concurrency=args.concurrency,
        rps=args.rps,
        retries=args.retries,
        backoff_s=0.2,
        backoff_max_s=2.0,
        request_timeout_s=10.0,
        poll_interval_s=args.poll_interval,
        poll_max_s=args.poll_max,
        timeout_min=args.timeout_s / 60.0,
    )
    # Mesh loading in the client (verification of every GLB, the kit assembly), timed separately: the engine
    # loads the mesh to score it anyway, so it is not remote-layer overhead.
    verify = _Timed(csm_mod.verify_glb)
    assembly = _Timed(csm_mod.write_assembly)
    csm_mod.verify_glb = verify
    csm_mod.write_assembly = assembly

    with tempfile.TemporaryDirectory(prefix="bench_remote_") as tmp:
        images, digests = make_images(args.jobs, Path(tmp))
        load0 = os.getloadavg()

        async def go() -> tuple[list[dict[str, Any]], int, CsmClient]:
            client = CountingCsmClient(api_key=info["api_key"], base_url=info["base_url"], policy=policy)
            async with client:
                records, live_peak = await run_jobs(client, images, Path(tmp) / "out", args.timeout_s)
            return records, live_peak, client

        cpu0, wall0 = time.process_time(), time.monotonic()
        records, live_peak, client = asyncio.run(go())
        cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
        load1 = os.getloadavg()

    parent.send("stop")
    server = parent.recv()
    proc.join(10)

    n = args.jobs
    status = Counter(r["status"] for r in records)
    reasons = Counter(
        (r["status"], (r.get("reason") or "")[:300]) for r in records if r["status"] != "complete"
    )
    sub = check_submissions(records, digests, server["sessions"])
    reqs = server["requests"]
    faults = Counter((k, f) for k, _, f, _ in reqs if f)
    by_kind = Counter(k for k, _, _, _ in reqs)
    n_faulted = sum(faults.values())
    stats = client.api.stats
    limiter = client.api.limiter
    times = [t for _, _, _, t in reqs]
    span_s = (max(times) - min(times)) if times else 0.0
    job_times = [r["time_s"] for r in records if r["status"] == "complete"]
    mesh_cpu = verify.cpu_s + assembly.cpu_s
    resub_jobs = sum(1 for r in records if r["resub"])
    per_config = Counter(r["config"] for r in records if r["status"] == "complete")

    rows = [
        (
            "jobs (mix of the six CSM_CONFIGS)",
            f"{n} ({', '.join(f'{c} {per_config[c]}' for c in CONFIG_NAMES)} complete)",
        ),
        ("complete / failed / lost", f"{status['complete']} / {status['failed']} / {status['lost']}"),
        (
            "server sessions per job step (count of steps)",
            ", ".join(f"{k}: {v}" for k, v in sorted(sub["per_step"].items())),
        ),
        ("resubmissions after MaybeSentError (jobs)", f"{client.resubmitted} ({resub_jobs})"),
        ("sessions on the server / orphans", f"{sub['sessions']} / {sub['orphans']}"),
        (
            "requests seen by the server (submit / poll / download)",
            f"{len(reqs)} ({by_kind['submit']} / {by_kind['poll']} / {by_kind['download']})",
        ),
        ("client tries / retries", f"{stats['requests']} / {stats['retries']}"),
        (
            "faults injected (share of requests)",
            f"{n_faulted} ({n_faulted / max(1, len(reqs)):.1%}): "
            + ", ".join(f"{k}:{f} {c}" for (k, f), c in sorted(faults.items())),
        ),
        ("concurrency limit", f"{args.concurrency}"),
        (
            "peak requests in flight: client limiter / stand-in",
            f"{limiter.peak_in_flight} / {server['peak_in_flight']}",
        ),
        ("peak jobs in flight (submitted, not finished)", f"{live_peak}"),
        (
            "request rate: mean / peak 1 s window (rps limit)",
            f"{len(reqs) / max(span_s, 1e-9):.0f} / {peak_rate(times):.0f} req/s ({args.rps:g})",
        ),
        (
            "job time complete: median / p90 / max",
            f"{statistics.median(job_times) if job_times else float('nan'):.2f} / {pct(job_times, 0.9):.2f} / {max(job_times, default=float('nan')):.2f} s",
        ),
        ("client CPU (this process)", f"{cpu_s:.2f} s = {1000 * cpu_s / n:.2f} ms/job"),
        (
            "  of which GLB verify + kit assembly",
            f"{mesh_cpu:.2f} s = {1000 * mesh_cpu / n:.2f} ms/job ({verify.calls} GLBs, {assembly.calls} assemblies)",
        ),
        (
            "  remote layer (HTTP, JSON, asyncio, retries)",
            f"{cpu_s - mesh_cpu:.2f} s = {1000 * (cpu_s - mesh_cpu) / n:.2f} ms/job",
        ),
        ("stand-in CPU (other process)", f"{server['cpu_s']:.2f} s"),
        ("wall time", f"{wall_s:.1f} s"),
        (
            "load average 1/5/15 min: before / after",
            f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} / {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} ({os.cpu_count()} CPUs)",
        ),
    ]
    if summary is not None:
        summary.update(
            jobs=n,
            complete=status["complete"],
            failed=status["failed"],
            lost=status["lost"],
            cpu_ms_per_job=1000 * cpu_s / n,
            remote_ms_per_job=1000 * (cpu_s - mesh_cpu) / n,
            peak_requests=limiter.peak_in_flight,
            concurrency=args.concurrency,
            wall_s=wall_s,
            problems=len(sub["problems"]),
        )
    print(f"## Remote-job layer: {n} CSM jobs against the loopback stand-in\n")
    print(
        f"concurrency {args.concurrency}, rps {args.rps:g}, retries {args.retries}, poll {args.poll_interval:g} s "
        f"x1.5 to {args.poll_max:g} s, sessions {args.duration[0]:g}-{args.duration[1]:g} s, request latency "
        f"{1000 * args.request_latency[0]:g}-{1000 * args.request_latency[1]:g} ms, faults {args.fault_rate:.0%}, "
        f"{'HTTP/1.0 (a connection per request)' if args.http10 else 'HTTP/1.1 keep-alive'}\n"
    )
    print("| metric | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print()
    if reasons:
        print("Jobs not complete, by reason:")
        for (st, why), c in reasons.most_common():
            print(f"- {c} x {st}: {why}")
        print()
    lost = status["lost"]
    ok = lost == 0 and not sub["problems"]
    for p in sub["problems"][:20]:
        print(f"PROBLEM: {p}")
    reached = "reached" if limiter.peak_in_flight >= args.concurrency else "did NOT reach"
    print(
        f"Summary: {status['complete']}/{n} complete, {status['failed']} failed with a reason, {lost} lost; "
        f"{'no job step submitted twice except counted resubmissions' if not sub['problems'] else 'SUBMISSION PROBLEMS'}; "
        f"requests in flight {reached} the concurrency limit ({limiter.peak_in_flight}/{args.concurrency}); "
        f"client CPU {1000 * cpu_s / n:.2f} ms/job ({1000 * (cpu_s - mesh_cpu) / n:.2f} ms/job without mesh "
        f"loading; target for the engine < 10 ms); wall {wall_s:.1f} s."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
