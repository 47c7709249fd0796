"""Local generation with the ``hf`` system: tokens/s and cases/s of a random-weight vision-language model,
one prompt at a time (batch 1) against batches of 8 (``HfSystem.prefetch``: one left-padded ``generate`` per
8 prompts), on this machine's CPU.

The model is :func:`gen3deval.models.testing.make_random_vlm` (Idefics3 / SmolVLM architecture; ``small``:
~4 M parameters, 64 px images = 16 image tokens, prompts of ~600 tokens with the built-in CadQuery template),
so the numbers measure the system's path (prompt building, processor, padding, generate, decoding,
classification), not a real checkpoint. Each case is a different random image: batch 8 answers the same
prompts as batch 1, greedy, and the benchmark checks the answers are identical.

Run:  .venv/bin/python benchmarks/bench_hf.py            # ~2 min here; writes RESULTS.md
      .venv/bin/python benchmarks/bench_hf.py --quick    # tiny model, 8 cases, no RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_clip import RESULTS, machine, write_section

SECTION = "## Local generation: the hf system (issue 13)"


def _images(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = folder / f"case{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _parameters(model: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)


def _prod(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _run(model: Path, images: list[Path], batch: int, max_new_tokens: int) -> dict[str, Any]:
    from gen3deval.suites.base import Case
    from gen3deval.systems.base import GenerationFailed, create_system

    s: Any = create_system(
        "hf",
        {
            "model": str(model),
            "language": "cadquery",
            "batch_size": batch,
            "max_new_tokens": max_new_tokens,
            "device": "cpu",
        },
    )
    s._model()  # loaded before timing (once per worker in a run)
    cases = [Case(id=p.stem, image=str(p)) for p in images]
    texts, tokens, prompt_tokens = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if batch > 1:
            s.prefetch([{"case": c, "attempt": 1, "previous": None} for c in cases])
        for c in cases:
            wd = Path(tmp) / c.id
            try:
                cand = s.generate(c, None, wd)
                meta = cand.meta
            except GenerationFailed as exc:
                meta = getattr(exc, "meta", {})
            texts.append((wd / "answer.md").read_text(encoding="utf-8"))
            tokens += int(meta.get("completion_tokens", 0))
            prompt_tokens += int(meta.get("prompt_tokens", 0))
        wall = time.perf_counter() - t0
    return {
        "batch": batch,
        "cases": len(cases),
        "wall_s": wall,
        "cases_s": len(cases) / wall,
        "tokens": tokens,
        "tokens_s": tokens / wall,
        "prompt_tokens": prompt_tokens / len(cases),
        "texts": texts,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="tiny model, 8 cases, no RESULTS.md")
    ap.add_argument("--cases", type=int, default=None, help="cases (default 32; --quick 8)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    import torch

    from gen3deval.models.testing import make_random_vlm

    size = "tiny" if args.quick else "small"
    n = args.cases or (8 if args.quick else 32)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = make_random_vlm(Path(tmp) / "vlm", seed=0, size=size)
        build_s = time.perf_counter() - t0
        images = _images(Path(tmp), n)
        params = _parameters(model)
        before = machine()
        rows = [_run(model, images, b, args.max_new_tokens) for b in (1, 8)]
        after = machine()
    same = rows[0]["texts"] == rows[1]["texts"]
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python benchmarks/bench_hf.py{' --quick' if args.quick else ''}`: {n} cases, random-weight "
        f"Idefics3 `{size}` ({params / 1e6:.1f} M parameters, built in {build_s:.1f} s), CadQuery template, "
        f"greedy, max_new_tokens {args.max_new_tokens}, CPU fp32, torch threads {torch.get_num_threads()}.",
        f"Before: {before}",
        f"After: {after}",
        "",
        "| batch | cases | prompt tokens/case | completion tokens | wall s | cases/s | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['cases']} | {r['prompt_tokens']:.0f} | {r['tokens']} | {r['wall_s']:.2f} "
            f"| {r['cases_s']:.2f} | {r['tokens_s']:.1f} |"
        )
    lines += [
        "",
        f"Batch 8 / batch 1: {rows[1]['cases_s'] / rows[0]['cases_s']:.2f}x cases/s. "
        f"Batched answers identical to one-at-a-time: {'yes' if same else 'NO'}.",
        "",
    ]
    md = "\n".join(lines)
    print(md)
    if not args.quick and not args.no_write:
        write_section(RESULTS, md, SECTION)
        print(f"(written to {RESULTS})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
