"""The metric processes of :mod:`gen3deval.reward`: ``compare`` of one candidate mesh against its reference.

The metric runs outside the trainer's process because manifold3d's booleans (the exact IoU) hold the GIL:
threads would score one mesh at a time. Each process is ``python -m gen3deval._reward_metric`` (no
multiprocessing: a trainer's script without a ``__main__`` guard is never re-imported), reading
length-prefixed pickled jobs on stdin and writing results on its original stdout (anything printed goes to
stderr). It keeps the references it prepared (surface samples) in a small LRU keyed by their content hash.
Requests come only from the parent: the arrays are a sandboxed program's already validated mesh.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from collections import OrderedDict
from typing import Any, BinaryIO

import numpy as np

_HEADER = struct.Struct("<Q")
_PREPARED: OrderedDict[tuple[str, str, int, int], Any] = OrderedDict()
PREPARED_CACHE = 64


def metric_job(
    cand_v: np.ndarray,
    cand_f: np.ndarray,
    key: str,
    ref_v: np.ndarray,
    ref_f: np.ndarray,
    metric: str,
    params: dict[str, Any],
) -> dict[str, Any] | str:
    """``compare(candidate, reference, metrics=[metric])`` with the protocol ``params``; a str when the
    candidate mesh cannot be scored (the UserInputError's message)."""
    from gen3deval.compare import compare, prepare_reference
    from gen3deval.errors import UserInputError
    from gen3deval.mesh.types import Mesh

    cand = Mesh.from_arrays(cand_v, cand_f)
    ref: Any = Mesh.from_arrays(ref_v, ref_f)
    if metric != "best_iou":  # best_iou uses the mesh as loaded; the others its normalised surface samples
        pkey = (key, str(params["normalize"]), int(params["samples"]), int(params["seed"]))
        hit = _PREPARED.get(pkey)
        if hit is None:
            hit = prepare_reference(ref, normalize=pkey[1], samples=pkey[2], seed=pkey[3])
            _PREPARED[pkey] = hit
            while len(_PREPARED) > PREPARED_CACHE:
                _PREPARED.popitem(last=False)
        _PREPARED.move_to_end(pkey)
        ref = hit
    try:
        return compare(
            cand,
            ref,
            normalize=params["normalize"],
            align=params["align"],
            samples=int(params["samples"]),
            seed=int(params["seed"]),
            metrics=[metric],
            thresholds=list(params["thresholds"]),
            iou_resolution=int(params["iou_resolution"]),
        )
    except UserInputError as exc:
        return str(exc)


def read_frame(f: BinaryIO) -> Any:
    """The next pickled object on ``f``; EOFError at the end."""
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("metric process closed")
    (n,) = _HEADER.unpack(head)
    blob = f.read(n)
    if len(blob) < n:
        raise EOFError("metric process closed mid-frame")
    return pickle.loads(blob)


def write_frame(f: BinaryIO, obj: Any) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEADER.pack(len(blob)) + blob)
    f.flush()


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer jobs until stdin ends: ("ok", result) or ("error", "Type: message")."""
    while True:
        try:
            args = read_frame(inp)
        except EOFError:
            return
        try:
            res: tuple[str, Any] = ("ok", metric_job(*args))
        except Exception as exc:  # reported to the parent, which classifies the row
            res = ("error", f"{type(exc).__name__}: {exc}")
        write_frame(out, res)


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the frames
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
