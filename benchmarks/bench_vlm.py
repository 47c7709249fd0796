"""The ``vlm`` system through ``gen3deval run`` against a slow model (issue 11, performance).

Run: ``.venv/bin/python benchmarks/bench_vlm.py [--cases 100] [--attempts 3] [--latency 2] [--concurrency 16]``
(default: about 1-2 min on 2 cores).

What it does: ``--cases`` distinct synthetic 64x64 PNGs (an ``images:DIR`` suite) x ``--attempts`` revisions
through the real ``gen3deval run`` (a subprocess, ``--jobs`` CPU workers, protocol ``code3d`` at
``--render-size``). The loopback OpenAI-compatible stand-in (tests/fakes/openai_server.py) runs in this
process and answers every chat request after ``--latency`` seconds with a valid Three.js box program, so every
attempt is executed, exported and rendered.

Reported: wall time of the run vs the estimate ``(cases x attempts x latency) / concurrency + execution time``
(execution time = the CPU stages' seconds from the store / ``--jobs``); the most chat requests in flight at the
server; engine overhead per attempt = (wall - estimate) / attempts in total. Attempt i+1 of a case waits for
attempt i's answer, execution and render, so with fewer cases than ``concurrency`` the network term is per
chain (``attempts x (latency + per-attempt CPU)``): the estimate takes the larger of the two.

Exit status 1 when the run fails or an attempt is missing / asked twice.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fakes.openai_server import FakeOpenAI, FakeOpenAIConfig  # noqa: E402

KEY = "sk-bench-vlm-0000"
CPU_STAGES = ("execute", "render", "metrics", "export")


def make_images(n: int, folder: Path) -> None:
    """``n`` distinct 64x64 PNGs (a colour gradient per index)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(n):
        rgb = np.stack([(xx * 4 + i) % 256, (yy * 4 + 3 * i) % 256, np.full_like(xx, (7 * i) % 256)], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(folder / f"obj{i:04d}.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--latency", type=float, default=2.0, help="seconds before each answer")
    ap.add_argument("--concurrency", type=int, default=16, help="chat requests in flight")
    ap.add_argument("--jobs", type=int, default=2, help="CPU worker processes")
    ap.add_argument("--render-size", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the run folder (printed)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_vlm_"))
    make_images(args.cases, tmp / "images")
    cfg = FakeOpenAIConfig(api_key=KEY, latency_s=args.latency)
    n_attempts = args.cases * args.attempts
    with FakeOpenAI(cfg) as server:
        spec = tmp / "spec.yaml"
        spec.write_text(
            f"suite: 'images:{tmp / 'images'}'\n"
            f"systems: ['vlm:model=test/vlm-small,base_url={server.base_url},attempts={args.attempts},"
            f"concurrency={args.concurrency},rps=1000']\n"
            f"protocol: {{name: code3d, render_size: {args.render_size}}}\njobs: {args.jobs}\n",
            encoding="utf-8",
        )
        env = dict(os.environ, OPENAI_API_KEY=KEY, GEN3DEVAL_SANDBOX="basic")
        exe = Path(sys.executable).with_name("gen3deval")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gen3deval.cli"]
        t0 = time.monotonic()
        proc = subprocess.run(
            [*cmd, "run", str(spec), "--out", str(tmp / "run"), "--quiet"],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - t0
        chats = server.chats(200)
        peak = server.max_in_flight
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
        return 1
    db = sqlite3.connect(tmp / "run" / "store.sqlite")
    gen = db.execute("SELECT COUNT(*) FROM stages WHERE stage='generate' AND status='done'").fetchone()[0]
    cpu_rows = db.execute(
        f"SELECT stage, SUM(seconds), COUNT(*) FROM stages WHERE system='vlm' AND stage IN "
        f"({','.join('?' * len(CPU_STAGES))}) GROUP BY stage",
        CPU_STAGES,
    ).fetchall()
    db.close()
    cpu = {s: (sec, n) for s, sec, n in cpu_rows}
    cpu_total = sum(sec for sec, _ in cpu.values())
    per_attempt_cpu = cpu_total / max(1, n_attempts)
    network = n_attempts * args.latency / args.concurrency
    chain = args.attempts * (args.latency + per_attempt_cpu)  # one case's attempts run one after another
    execution = cpu_total / args.jobs
    estimate = max(network, chain) + execution
    load = os.getloadavg()
    print(
        f"bench_vlm: {args.cases} cases x {args.attempts} attempts, latency {args.latency:g} s, "
        f"concurrency {args.concurrency}, jobs {args.jobs}, render {args.render_size}px"
    )
    print(f"  load average (1 min) at the end: {load[0]:.2f}")
    print(f"  answers stored {gen} / {n_attempts}; chat requests answered {len(chats)}")
    print(f"  chat requests in flight at the server: peak {peak} (concurrency {args.concurrency})")
    for s, (sec, n) in sorted(cpu.items()):
        print(f"  {s:8s}: {n} rows, {sec:.1f} s in workers ({1000 * sec / max(1, n):.0f} ms each)")
    print(
        f"  estimate: max(network {network:.1f} s, chain {chain:.1f} s) + execution {execution:.1f} s "
        f"= {estimate:.1f} s"
    )
    print(f"  wall time of `gen3deval run`: {wall:.1f} s (x{wall / estimate:.2f} of the estimate)")
    print(
        f"  engine overhead per attempt: {1000 * (wall - estimate) / n_attempts:.0f} ms "
        "(wall - estimate, start-up and report included)"
    )
    if args.keep:
        print(f"  run folder: {tmp / 'run'}")
    ok = gen == n_attempts and len(chats) == n_attempts
    if not ok:
        print("  FAILED: an attempt is missing or was asked twice")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
