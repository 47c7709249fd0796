"""``gen3deval exec FILE``: run one CadQuery or Three.js program in the sandbox (PROTOCOLS.md section 9).

Exit status: 0 when the program is executable, 1 when it is not (its error class and message are the
output) or when its runtime is missing (an error line naming the fix, no result), 2 for bad usage
(missing file, unknown or unguessable language, bad limits).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from gen3deval.errors import UserInputError
from gen3deval.execute.registry import EXECUTORS, language_for_suffix, program_suffixes

HELP = (
    "run one CadQuery (.py) or Three.js (.js) program in the sandbox and report the outcome "
    "(exit 0: executable, 1: not executable, 2: bad usage)"
)
EPILOG = (
    "exit status: 0 when the program is executable; 1 when it is not (the error class and message are "
    "printed) or when the language's runtime is missing (an error naming the fix); 2 for bad usage"
)

# Model answers (markdown/prose) go through extract_code first.
ANSWER_SUFFIXES = (".md", ".markdown", ".txt")


def _suffix_help() -> str:
    return ", ".join(f"{suffix} -> {lang}" for suffix, lang in program_suffixes().items())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("file", help="the program (.py CadQuery, .js Three.js) or a model answer (.md/.txt)")
    p.add_argument(
        "--lang",
        choices=list(EXECUTORS),
        help=f"program language (default: from the suffix, {_suffix_help()})",
    )
    p.add_argument("--out", metavar="MESH", help="write the mesh here (.glb/.obj/.ply/.stl/.off)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, metavar="S", help="wall-clock and CPU limit in seconds")
    p.add_argument("--memory-mb", type=int, metavar="N", help="address-space limit in MiB")
    p.add_argument(
        "--extract",
        action="store_true",
        help="FILE is a model answer: extract the code first (implied for .md/.txt)",
    )


def _language(args: argparse.Namespace, path: Path) -> str:
    if args.lang:
        return str(args.lang)
    lang = language_for_suffix(path.suffix)
    if lang is None:
        raise UserInputError(
            f"{path}: cannot tell the language from the suffix {path.suffix or '(none)'!r}; "
            f"pass --lang {' or --lang '.join(EXECUTORS)}"
        )
    return lang


def _watertight(mesh: Any) -> bool:
    """Closed 2-manifold after welding coincident vertices (exporters split them at UV/normal seams)."""
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    return bool(tm.is_watertight)


def run(args: argparse.Namespace) -> int:
    from gen3deval.execute import default_limits, extract_code
    from gen3deval.execute import run as run_program

    path = Path(args.file)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    language = _language(args, path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    limits = default_limits(language)
    if args.timeout is not None:
        if not args.timeout > 0:
            raise UserInputError(f"--timeout must be > 0, got {args.timeout}")
        limits = replace(limits, wall_s=float(args.timeout), cpu_s=float(args.timeout))
    if args.memory_mb is not None:
        if args.memory_mb <= 0:
            raise UserInputError(f"--memory-mb must be > 0, got {args.memory_mb}")
        limits = replace(limits, memory_mb=int(args.memory_mb))
    program: str | None = text
    if args.extract or path.suffix.lower() in ANSWER_SUFFIXES:
        program = extract_code(text, language)
    result = run_program(program, language, limits)

    mesh = result.mesh if result.executable else None
    written = None
    if args.out and mesh is not None:
        from gen3deval.mesh.io import save_mesh

        written = str(save_mesh(mesh, args.out))
    out: dict[str, Any] = {
        "file": str(path),
        "language": language,
        "executable": bool(result.executable),
        "error_class": result.error_class,
        "message": result.message,
        "wall_s": round(float(result.wall_s), 4),
        "peak_mb": round(float(result.peak_mb), 1),
        "faces": mesh.n_faces if mesh is not None else 0,
        "watertight": _watertight(mesh) if mesh is not None else False,
        "bounds": mesh.bounds.tolist() if mesh is not None else None,
        "out": written,
        "stdout": result.stdout,
        "limits": result.limits.to_dict(),
        "sandbox": result.sandbox,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_human(out, args.out)
    return 0 if out["executable"] else 1


def _print_human(out: dict[str, Any], wanted_out: str | None) -> None:
    head = f"{out['file']} ({out['language']}): "
    if out["executable"]:
        print(
            head + f"executable, {out['faces']} faces, watertight: {'yes' if out['watertight'] else 'no'}, "
            f"{out['wall_s']:.2f} s, peak {out['peak_mb']:.0f} MiB"
        )
    else:
        print(head + f"NOT executable [{out['error_class']}] {out['message']}")
        print(f"  {out['wall_s']:.2f} s, peak {out['peak_mb']:.0f} MiB")
    if out["stdout"]:
        lines = str(out["stdout"]).rstrip("\n").splitlines()
        print("  program output:" + (f" (last 20 of {len(lines)} lines)" if len(lines) > 20 else ""))
        for line in lines[-20:]:
            print(f"    {line}")
    if out["out"]:
        print(f"  mesh written to {out['out']}")
    elif wanted_out:
        print(f"  no mesh written to {wanted_out}: the program did not produce one")
    lim = out["limits"]
    sb = out["sandbox"]
    print(
        f"  limits: {lim['wall_s']:g} s wall, {lim['cpu_s']:g} s CPU, {lim['memory_mb']} MiB; "
        f"sandbox: network {sb.get('network', '?')}, user {sb.get('user', '?')}"
    )
