"""``gen3deval run [SPEC.yaml] [flags]``: evaluate systems on suites into a run folder, resumably.

With no arguments: the built-in ``quickstart`` suite, the offline baselines oracle, bbox, boxes and sphere,
protocol ``default``, output ``runs/quickstart`` (all offline). Running again on the same folder resumes:
finished stages are skipped. Without ``--out`` the folder is ``runs/<spec file stem>`` for a spec file,
``runs/<kind>-<path stem>`` for ``--suite``, else ``runs/quickstart`` (stable names, so a rerun resumes).
``gen3deval run --out RUN_DIR`` alone resumes RUN_DIR with the spec it was started with.

Progress goes to stderr; the last line on stdout is the path of the HTML report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gen3deval.config import RunSpec

HELP = "evaluate systems on a suite (resumable; prints the report path last)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="run spec (YAML): suite(s), systems, protocol, out, jobs")
    p.add_argument(
        "--suite",
        action="append",
        metavar="KIND:PATH",
        help="suite to run (repeatable): quickstart, images:DIR, meshes:DIR, manifest:FILE, gencad:FILE",
    )
    p.add_argument(
        "--system",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="systems to evaluate (e.g. --system oracle bbox); see `gen3deval list systems`",
    )
    p.add_argument("--protocol", metavar="NAME", help="protocol preset: default, code3d, gencad, clip3d")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (created; an existing one is resumed)")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: the CPU cores)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N cases of each suite")
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of live progress bars")


def _default_out(args: argparse.Namespace) -> Path:
    if args.spec:
        return Path("runs") / Path(args.spec).stem
    if args.suite:
        kind, _, rest = args.suite[0].partition(":")
        stem = Path(rest.rstrip("/")).stem if rest else ""
        return Path("runs") / (f"{kind}-{stem}" if stem else kind)
    return Path("runs") / "quickstart"


def resolve_spec(args: argparse.Namespace) -> RunSpec:
    """The validated RunSpec of the command line (ConfigError naming the field when wrong)."""
    from gen3deval.config import RunSpec, SystemSpec, build_spec, load_spec_file, protocol_from_params
    from gen3deval.engine.store import Store, is_run_dir

    if args.system and not args.spec and args.system[-1].endswith((".yaml", ".yml")):
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
            from gen3deval.config import default_jobs

            return RunSpec(
                suites=tuple(stored["suites"]),
                systems=tuple(SystemSpec(**s) for s in stored["systems"]),
                protocol=protocol_from_params(stored["protocol"]),
                out=Path(args.out),
                jobs=args.jobs or default_jobs(),
                limit=args.limit if args.limit is not None else stored.get("limit"),
                retries=int(stored.get("retries", 2)),
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
        default_out=_default_out(args),
    )


def run(args: argparse.Namespace) -> int:
    from gen3deval.engine.build import build_engine, spec_json
    from gen3deval.engine.progress import make_progress
    from gen3deval.engine.results import build_meta, build_rows, renderers_used
    from gen3deval.engine.store import Store
    from gen3deval.report import write_reports

    spec = resolve_spec(args)
    progress = make_progress(args.quiet)
    engine, suites = build_engine(
        spec, progress=progress
    )  # loads the suites: bad input fails here, before work
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
    print(report)
    return 0
