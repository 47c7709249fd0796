"""The ``gen3deval`` command line: one entry, one module per command in :mod:`gen3deval.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Exit codes: 0 success, 2 bad input (one line on stderr, never a traceback), 1 unexpected failure,
130 interrupted (Ctrl-C or SIGTERM: a run prints the command that resumes it), 141 output pipe closed
(``gen3deval list | head -1``: quiet). An unexpected exception is one line too; ``GEN3DEVAL_DEBUG=1``
shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from gen3deval.errors import Gen3DEvalError, UserInputError

# Command name -> module under gen3deval.commands (imported lazily so `--help` stays fast).
COMMANDS: dict[str, str] = {
    "run": "run_cmd",
    "score": "score_cmd",
    "compare": "compare_cmd",
    "render": "render_cmd",
    "exec": "exec_cmd",
    "progress": "progress_cmd",
    "report": "report_cmd",
    "clean": "clean_cmd",
    "list": "list_cmd",
    "reward": "reward_cmd",
    "merge": "merge_cmd",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits with 2 already; keep it to one line plus usage, as users expect.
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from gen3deval import __version__

    parser = _Parser(prog="gen3deval", description="Reproducible evaluation of 3D generative AI.")
    parser.add_argument("--version", action="version", version=f"gen3deval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"gen3deval.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gen3deval.commands.{module_name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a run stops the same way (workers killed, committed rows kept)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while a command runs (signals can only be set in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _quiet_broken_pipe() -> None:
    # The reader went away (`| head`): send what is still buffered to /dev/null so that the interpreter's
    # final flush does not print "Exception ignored ... BrokenPipeError".
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # `gen3deval --help | head -1`
        _quiet_broken_pipe()
        return 141
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    cmd = args.command
    try:
        with _sigterm_as_interrupt():
            code = int(args._run(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            return code
    except UserInputError as exc:
        print(f"gen3deval {cmd}: error: {exc}", file=sys.stderr)
        return 2
    except Gen3DEvalError as exc:
        print(f"gen3deval {cmd}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        out = getattr(args, "resume_out", None)  # set by the run command once it knows its folder
        hint = f"; resume with: gen3deval run --out {shlex.quote(str(out))}" if out else ""
        if out and getattr(args, "resume_command", None):  # `score`: the same command, same folder
            hint = f"; resume with: {args.resume_command}"
        with contextlib.suppress(OSError):
            print(f"{what}{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 141
    except OSError as exc:
        # Files a user named (a folder given for a file, no permission, disk full ...): one line.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"gen3deval {cmd}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("GEN3DEVAL_DEBUG"):
            raise
        print(
            f"gen3deval {cmd}: internal error: {type(exc).__name__}: {exc} "
            "(a bug: please report it; GEN3DEVAL_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
