"""The audit tripwire cannot be switched off from inside the program (issue 9, item 1).

Each case runs ``install_audit_tripwire`` in a fresh interpreter (hooks cannot be removed), then tries
a bypass that worked on the old hook: replacing the functions it resolved paths with, or re-entering
it through a path-like object's ``__fspath__`` so that nothing was checked while it ran.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SECRET = "GROUND-TRUTH-4711"


def _run(tmp_path: Path, attack: str) -> tuple[str, list[str]]:
    """Run ``attack`` under the tripwire (write root: tmp_path/box); returns (stdout, events seen)."""
    box = tmp_path / "box"
    box.mkdir()
    truth = tmp_path / "truth.txt"  # the 'ground truth': outside the box, world-readable
    truth.write_text(SECRET)
    body = textwrap.indent(textwrap.dedent(attack).strip("\n"), "    ")
    code = (
        "import os, shutil, socket, sys\n"
        "from gen3deval.execute.sandbox.tripwire import install_audit_tripwire\n"
        "seen = []\n"
        f"install_audit_tripwire([{str(box)!r}], [], lambda ev, d: seen.append(ev))\n"
        f"os.chdir({str(box)!r})\n"
        f"BOX, TRUTH = {str(box)!r}, {str(truth)!r}\n"
        "try:\n"
        f"{body}\n"
        "except PermissionError as exc:\n"
        "    print('BLOCKED', exc)\n"
        "sys.stdout.write('EVENTS ' + ','.join(sorted(set(seen))) + '\\n')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    events = [line for line in out.stdout.splitlines() if line.startswith("EVENTS ")]
    return out.stdout, events[-1][7:].split(",") if events else []


@pytest.mark.parametrize(
    "attack",
    [
        # The old hook resolved paths with os.path.realpath looked up at call time.
        "os.path.realpath = lambda p, **k: BOX\nprint(open(TRUTH).read())",
        "import posixpath\nposixpath.realpath = lambda p, **k: BOX\nposixpath.abspath = lambda p: BOX\n"
        "print(open(TRUTH).read())",
        # Functions realpath itself is built on, and builtins.
        "os.lstat = lambda *a, **k: os.stat(BOX)\nos.readlink = lambda *a, **k: BOX\n"
        "os.fspath = lambda p: BOX\nos.fsdecode = lambda p: BOX\nos.getcwd = lambda: BOX\n"
        "import builtins\nbuiltins.isinstance = lambda *a: False\nbuiltins.any = lambda *a: True\n"
        "print(open(TRUTH).read())",
    ],
    ids=["os.path.realpath", "posixpath", "lstat-fspath-builtins"],
)
def test_replacing_path_functions_does_not_open_the_ground_truth(tmp_path: Path, attack: str) -> None:
    out, events = _run(tmp_path, attack)
    assert SECRET not in out, out
    assert "BLOCKED" in out and "open" in events


def test_reentering_the_hook_checks_everything(tmp_path: Path) -> None:
    # shutil.rmtree audits its argument as given, so the hook itself calls __fspath__; the old hook
    # skipped every check while it was busy.
    attack = """
    class P:
        def __fspath__(self):
            global stolen
            try:
                stolen = open(TRUTH).read()
            except PermissionError:
                stolen = "refused"
            try:
                socket.socket().connect(("127.0.0.1", 9))
            except PermissionError:
                pass
            except OSError:
                print("SOCKET-UNCHECKED")
            return "inside.txt"
    stolen = None
    try:
        shutil.rmtree(P())
    except FileNotFoundError:
        pass
    print("STOLEN", stolen)
    """
    out, events = _run(tmp_path, attack)
    assert SECRET not in out and "SOCKET-UNCHECKED" not in out, out
    assert "STOLEN refused" in out
    assert "socket.connect" in events and "open" in events, out


def test_str_subclass_and_repr_run_no_program_code(tmp_path: Path) -> None:
    attack = """
    calls = []
    class Mode(str):
        def __contains__(self, c):
            calls.append("contains"); return False
    class Evil:
        def __repr__(self):
            calls.append("repr"); return "x"
    class Path(str):
        def startswith(self, *a):
            calls.append("startswith"); return True
    try:
        open(Path(TRUTH), Mode("r")).read(); print("READ")
    except PermissionError:
        pass
    try:
        os.system(Evil())
    except (PermissionError, TypeError):
        pass
    print("CALLS", calls)
    """
    out, _ = _run(tmp_path, attack)
    assert "READ" not in out and "CALLS []" in out, out


def test_plain_work_in_the_box_still_passes(tmp_path: Path) -> None:
    # Control: the hook is not simply blocking everything (the tests above can fail).
    attack = """
    open("a.txt", "w").write("ok")
    os.mkdir("d"); os.rename("a.txt", "d/b.txt")
    print("READ", open(os.path.join(BOX, "d", "b.txt")).read(), sorted(os.listdir(".")))
    """
    out, events = _run(tmp_path, attack)
    assert "READ ok ['d']" in out and events == [""], out
