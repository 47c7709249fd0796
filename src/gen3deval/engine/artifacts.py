"""Content-addressed artifact files: ``RUN_DIR/artifacts/ab/abcdef....ext`` named by their sha256.

A file is first written elsewhere (a stage's scratch folder), then hashed and moved into place with an
atomic rename, so an artifact path either does not exist or holds the complete file. Identical outputs
(the same reference for every system, the oracle's candidate) are stored once. An artifact's permissions
are the run folder's read/write bits at most (never a source file's execute, setuid or wider bits).

:func:`content_digest` hashes the input files a stage reads (a reference mesh and the files it names, an
input image) for the stage's key, with a cache by (path, size, mtime) so a rerun does not read them twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

ARTIFACTS_DIR = "artifacts"
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _side_files(path: Path) -> list[Path]:
    """Files a mesh file names beside it (a glTF's buffers and images, an OBJ's material libraries):
    they are part of the mesh's content."""
    names: list[str] = []
    try:
        if path.suffix.lower() == ".gltf":
            doc = json.loads(path.read_text(encoding="utf-8"))
            for kind in ("buffers", "images"):
                names += [str(x["uri"]) for x in doc.get(kind) or [] if isinstance(x, dict) and "uri" in x]
        elif path.suffix.lower() == ".obj":
            with open(path, encoding="utf-8", errors="replace") as f:
                names += [m.group(1).strip() for line in f if (m := re.match(r"mtllib\s+(.+)", line))]
    except (OSError, ValueError, AttributeError):
        return []  # the loader reports an unreadable file; the key keeps the main file's bytes
    return [path.parent / n for n in names if not n.startswith("data:")]


def _plain_digest(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return "missing"


def content_digest(path: str | Path | None) -> str:
    """sha256 of a file's bytes (and of the side files a glTF or OBJ names); ``missing`` when it does not
    exist. Cached by (path, size, mtime, inode), so an unchanged file is read once per process."""
    if path is None:
        return "-"
    p = Path(path).absolute()
    try:
        st = p.stat()
    except OSError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not-a-file"
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _DIGESTS.get(key)
    if digest is None:
        try:
            digest = sha256_file(p)
        except OSError as exc:
            return f"unreadable:{exc.errno}"
        side = _side_files(p)
        if side:
            digest = hashlib.sha256(
                "\n".join([digest, *(f"{s.name}:{_plain_digest(s)}" for s in side)]).encode()
            ).hexdigest()
        _DIGESTS[key] = digest
    return digest


def _suffix(path: Path) -> str:
    # Keep a short, safe suffix only: it is for humans and viewers, the hash is the identity.
    s = path.suffix.lower()
    return s if 1 < len(s) <= 8 and s[1:].isalnum() else ""


class ArtifactStore:
    """Content-addressed files under ``run_dir/artifacts``; paths handed out are relative to ``run_dir``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / ARTIFACTS_DIR
        self._dirs: set[str] = set()  # fan-out folders known to exist (saves a syscall per artifact)
        self._mode: int | None = None

    @property
    def mode(self) -> int:
        """Permission bits of artifact files: the run folder's read/write bits (e.g. 0o644 for 0o755)."""
        if self._mode is None:
            self._mode = stat.S_IMODE(self.run_dir.stat().st_mode) & 0o666
        return self._mode

    def put(self, src: str | Path, *, move: bool = False) -> str:
        """Add a file; returns its path relative to the run folder (``artifacts/ab/<sha256>.ext``).

        ``move=True`` renames ``src`` into place (it must be on the same file system, e.g. a scratch folder
        inside the run folder); otherwise the file is copied. Existing identical content is reused.
        """
        src = Path(src)
        digest = sha256_file(src)
        rel = Path(ARTIFACTS_DIR) / digest[:2] / f"{digest}{_suffix(src)}"
        dst = self.run_dir / rel
        if dst.exists():
            if move:
                src.unlink(missing_ok=True)
            return rel.as_posix()
        if digest[:2] not in self._dirs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(digest[:2])
        if move:
            try:
                # A stage may have copied a user's file with its mode (shutil.copy): never keep it.
                os.chmod(src, self.mode)
                os.replace(src, dst)
                return rel.as_posix()
            except OSError:  # another file system: fall back to copy + rename
                pass
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, self.mode)
        os.replace(tmp, dst)
        if move:
            src.unlink(missing_ok=True)
        return rel.as_posix()

    def path(self, rel: str) -> Path:
        """Absolute path of an artifact given its run-relative path."""
        return self.run_dir / rel

    def digest(self, rel: str) -> str:
        """The sha256 of an artifact, read from its name."""
        return Path(rel).name.split(".")[0]
