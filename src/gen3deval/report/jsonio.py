"""JSON conventions of the report files (``results.jsonl``, ``summary.json``).

Strict JSON has no NaN or infinity, and a number must stay a number, so every non-finite float is written
as ``null``: a metric value of null means "no value"; in ``summary.json`` a statistic of null with ``n > 0``
(or a ``worst`` of null) means infinitely bad, e.g. the all-cases median Chamfer when most cases failed
(failures score +inf). Metric values themselves are finite (PSNR is capped at 100 dB by the metric).
:func:`read_results` still reads the ``"inf"``/``"-inf"`` strings older versions wrote. Files are written
atomically (temp file + rename), so an interrupted run never leaves half a report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# Row fields that hold text; "inf" there is text, never a number.
_TEXT_FIELDS = ("case", "category", "system", "error_class", "error")


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: NaN and +-inf -> None, numpy/dataclasses/paths converted."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return [jsonable(x) for x in obj.tolist()]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(x) for x in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON text of ``jsonable(obj)`` (never NaN/Infinity tokens)."""
    return json.dumps(jsonable(obj), allow_nan=False, ensure_ascii=False, **kw)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "x") (not mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    write_text_atomic(path, "".join(dumps(r) + "\n" for r in rows))


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``results.jsonl`` back (one dict per row). The strings "inf"/"-inf" that older versions wrote
    in numeric fields become floats again."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            for k, v in row.items():
                if k not in _TEXT_FIELDS and not k.endswith(("_method", "_reason")) and v in ("inf", "-inf"):
                    row[k] = math.inf if v == "inf" else -math.inf
            out.append(row)
    return out


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/summary.json`` as a dict (estimates as dicts, non-finite numbers as None)."""
    with (Path(run_dir) / "summary.json").open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{Path(run_dir) / 'summary.json'}: not a JSON object")
    return data
