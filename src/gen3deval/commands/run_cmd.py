"""``gen3deval run [SPEC.yaml] [flags]``: evaluate systems on suites into a run folder, resumably.

With no arguments: the built-in ``quickstart`` suite, the offline baselines oracle, bbox, boxes and sphere,
protocol ``default``, output ``runs/quickstart`` (all offline). Running again on the same folder resumes:
finished stages are skipped. Without ``--out`` the folder is ``runs/<spec file stem>`` for a spec file,
``runs/<kind>-<folder>-<stem>-<hash>`` for ``--suite`` (the hash of the resolved paths, so two
``manifest.jsonl`` in different folders get different folders), else ``runs/quickstart``: stable names, so a
rerun resumes. ``gen3deval run --out RUN_DIR`` alone resumes RUN_DIR with the spec it was started with.
Resuming a folder with other suites than it holds warns (their cases would share one leaderboard).

Progress goes to stderr; stdout gets a compact leaderboard, then the path of the HTML report (the last line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gen3deval.config import RunSpec

HELP = "evaluate systems on a suite (resumable; prints the report path last)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="run spec (YAML): suite(s), systems, protocol, out, jobs")
    p.add_argument(
        "--suite",
        action="append",
        metavar="KIND:PATH",
        help="suite to run (repeatable): quickstart, images:DIR, meshes:DIR, manifest:FILE, gencad:FILE, toys4k:DIR",
    )
    p.add_argument(
        "--system",
        action="extend",
        nargs="+",
        metavar="NAME[@LABEL][:KEY=VALUE,...]",
        help="systems to evaluate, with settings and an optional report label, e.g. --system oracle bbox "
        "files:dir=outputs/mine,up=z files@other:dir=outputs/other; see `gen3deval list systems`",
    )
    p.add_argument("--protocol", metavar="NAME", help="protocol preset: default, code3d, gencad, clip3d")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (created; an existing one is resumed)")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: the CPU cores)")
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="a sample of N cases of each suite, stratified across categories (seeded by --seed)",
    )
    p.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="seed of the --limit sample (default 0; not the protocol's sampling seed)",
    )
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of live progress bars")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where stages run: local worker processes (default) or a Ray cluster (docs/scale-out.md)",
    )
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join: auto, or ray://HOST:PORT")
    p.add_argument(
        "--ray-shared-dir",
        metavar="DIR",
        help="a folder every Ray node sees (NFS...): the run folder goes there (an --out must be inside it)",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N of the (case, system) pipelines, into its own folder; `gen3deval merge` "
        "unions the shards (Slurm arrays, Kubernetes indexed jobs)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun stages that failed before even when their inputs are unchanged (otherwise they are kept)",
    )


def _default_out(args: argparse.Namespace) -> Path:
    if args.spec:
        return Path("runs") / Path(args.spec).stem
    if args.suite:
        return Path("runs") / default_suite_folder(args.suite)
    return Path("runs") / "quickstart"


def default_suite_folder(suites: list[str]) -> str:
    """The run folder name for ``--suite`` specs: ``kind-folder-stem-hash`` of the first suite (``manifest-
    lowpoly304-1a2b3c4d`` for ``manifest:.../lowpoly304/manifest.jsonl``), ``+N`` for N more suites; the hash
    covers every suite's kind and resolved path, so different sources never share a folder, and the same
    sources (from any working folder) always get the same one."""
    import hashlib
    import re

    resolved = []
    for spec in suites:
        kind, sep, rest = spec.strip().partition(":")
        resolved.append(f"{kind}:{Path(rest).expanduser().resolve()}" if sep and rest else spec.strip())
    kind, sep, rest = suites[0].strip().partition(":")
    if not (sep and rest) and len(suites) == 1:
        return kind  # a built-in suite: `runs/quickstart`
    parts = [kind]
    if rest:
        p = Path(rest).expanduser().resolve()
        for part in (p.parent.name if p.suffix else "", p.stem):
            if part and part not in parts:
                parts.append(part)
    if len(suites) > 1:
        parts.append(f"+{len(suites) - 1}")
    digest = hashlib.sha256("\n".join(resolved).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts)).strip("._") or "suite"
    return f"{name[:60]}-{digest}"


def suite_change_warning(out: Path, suites: list[dict[str, object]]) -> str | None:
    """A warning when the run folder ``out`` already holds results of other suites than ``suites`` (the
    suite descriptions of :func:`gen3deval.engine.build.load_cases`): resuming would put both in one
    leaderboard. None for a new folder or the same suites."""
    from gen3deval.engine.store import Store, is_run_dir
    from gen3deval.errors import Gen3DEvalError

    if not is_run_dir(out):
        return None
    try:
        with Store(out, readonly=True) as store:
            stored = store.get_meta("suites", []) or []
    except Gen3DEvalError:  # e.g. killed before its tables were made: the engine opens (or reports) it
        return None
    before = {(str(s.get("kind")), str(s.get("source"))) for s in stored if isinstance(s, dict)}
    now = {(str(s.get("kind")), str(s.get("source"))) for s in suites}
    if not before or now <= before:
        return None
    new = sorted(f"{k}:{src}" for k, src in now - before)
    old = sorted(f"{k}:{src}" for k, src in before)
    return (
        f"{out} already holds results of {', '.join(old)}; this run adds {', '.join(new)}: the report will "
        "show the cases of all of them in one leaderboard (use another --out to keep them apart)"
    )


def resolve_spec(args: argparse.Namespace) -> RunSpec:
    """The validated RunSpec of the command line (ConfigError naming the field when wrong)."""
    from gen3deval.config import RunSpec, SystemSpec, build_spec, load_spec_file, protocol_from_params
    from gen3deval.engine.store import Store, is_run_dir

    if (
        args.system
        and not args.spec
        and args.system[-1].endswith((".yaml", ".yml"))
        and "=" not in args.system[-1]
    ):
        # `--system a b spec.yaml`: the list option swallowed the positional spec.
        args.spec = args.system.pop()
    if args.jobs is not None and args.jobs < 1:
        from gen3deval.errors import ConfigError

        raise ConfigError(f"--jobs: expected a positive integer, got {args.jobs}")
    # `gen3deval run --out RUN_DIR` alone: resume with the spec stored in the folder.
    if args.out and not (args.spec or args.suite or args.system or args.protocol) and is_run_dir(args.out):
        with Store(args.out, readonly=True) as store:
            stored = store.get_meta("spec")
        if stored:
            from gen3deval.config import default_jobs, parse_shard

            return RunSpec(
                suites=tuple(stored["suites"]),
                systems=tuple(SystemSpec(**s) for s in stored["systems"]),
                protocol=protocol_from_params(stored["protocol"]),
                out=Path(args.out),
                jobs=args.jobs or default_jobs(),
                limit=args.limit if args.limit is not None else stored.get("limit"),
                retries=int(stored.get("retries", 2)),
                seed=args.seed if args.seed is not None else int(stored.get("seed") or 0),
                executor=args.executor or stored.get("executor", "local"),
                ray_address=args.ray_address or stored.get("ray_address"),
                ray_shared_dir=args.ray_shared_dir or stored.get("ray_shared_dir"),
                shard=parse_shard(args.shard or stored.get("shard"), "--shard"),
            )
    data = None
    base = Path(".")
    if args.spec:
        data = load_spec_file(args.spec)
        base = Path(args.spec).resolve().parent
    return build_spec(
        data,
        base_dir=base,
        suites=args.suite,
        systems=args.system,
        protocol=args.protocol,
        out=args.out,
        jobs=args.jobs,
        limit=args.limit,
        seed=args.seed,
        default_out=_default_out(args),
        executor=getattr(args, "executor", None),
        ray_address=getattr(args, "ray_address", None),
        ray_shared_dir=getattr(args, "ray_shared_dir", None),
        shard=getattr(args, "shard", None),
    )


def run(args: argparse.Namespace) -> int:
    spec = resolve_spec(args)
    args.resume_out = spec.out  # Ctrl-C / SIGTERM: cli.main prints `resume with: gen3deval run --out ...`
    report, _engine, _rows = execute(
        spec, quiet=args.quiet, retry_failed=bool(getattr(args, "retry_failed", False))
    )
    print(report)
    return 0


def execute(
    spec: RunSpec, *, quiet: bool, retry_failed: bool = False
) -> tuple[Path, Any, list[dict[str, Any]]]:
    """Run (or resume) ``spec``: warnings and progress to stderr, the compact leaderboard to stdout; returns
    (report.html, the engine, the result rows). The caller prints the report path (the last line)."""
    from gen3deval.engine.build import build_engine, spec_json
    from gen3deval.engine.progress import make_progress
    from gen3deval.engine.results import build_meta, build_rows, renderers_used
    from gen3deval.engine.store import Store
    from gen3deval.report import write_reports

    progress = make_progress(quiet)
    engine, suites = build_engine(
        spec, progress=progress, retry_failed=retry_failed
    )  # loads the suites and checks the run: bad input fails here, before work
    for warning in engine.warnings:  # from the preflight: systems, references, outputs matching no case
        print(f"warning: {warning}", file=sys.stderr)
    changed = suite_change_warning(Path(spec.out), suites)
    if changed:
        print(f"warning: {changed}", file=sys.stderr)
    for s in suites:
        for problem in s["problems"][:5]:
            print(f"warning: suite {s['name']}: {problem}", file=sys.stderr)
        if len(s["problems"]) > 5:
            print(f"warning: suite {s['name']}: {len(s['problems']) - 5} more problems", file=sys.stderr)
    print(
        f"run {spec.out}: {len(engine.cases)} cases x {len(spec.systems)} systems "
        f"({', '.join(s.label for s in spec.systems)}), protocol {spec.protocol.name}, jobs {spec.jobs}",
        file=sys.stderr,
    )
    result = engine.run(suites=suites, spec=spec_json(spec))
    ran = sum(result.ran.values())
    failed = sum(result.failed.values())
    skipped = sum(result.skipped.values())
    print(
        f"stages: {ran} ran ({failed} failed), {skipped} already finished; {result.seconds:.1f} s",
        file=sys.stderr,
    )
    with Store(spec.out, readonly=True) as store:
        rows, unfinished = build_rows(store)
        meta = build_meta(store)
        renderers = renderers_used(store)
    if len(renderers) > 1:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in renderers)
        print(
            f"warning: the images of this run come from {len(renderers)} renderers: {shown}", file=sys.stderr
        )
    if unfinished:
        # Pipelines this folder was asked for earlier (other systems or cases) that are still open.
        print(f"warning: {len(unfinished)} pipelines unfinished", file=sys.stderr)
    meta["unfinished"] = len(unfinished)
    report = write_reports(spec.out, rows, meta)
    from gen3deval.report.jsonio import read_summary
    from gen3deval.report.terminal import leaderboard_lines

    print("\n".join(leaderboard_lines(read_summary(report.parent))))
    return report, engine, rows
