"""JSON and JSON-lines files of a run (``metrics.jsonl``, ``steps.jsonl``, ``eval.json``).

Written strictly (NaN and inf become ``null``, see :func:`json_safe`) and atomically; read
strictly, or leniently for logs that a kill may have cut in the middle of a line.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from fcnseg.errors import DataError
from fcnseg.outputs import atomic_write_text


def json_safe(v: Any) -> Any:
    """``v`` with NaN/inf floats replaced by None, so that ``json.dumps`` writes strict JSON
    (undefined scores, e.g. the IoU of a class absent from labels and predictions)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(u) for u in v]
    return v


def read_jsonl(path: str | os.PathLike, *, lenient: bool = False) -> list[dict]:
    """Rows of a JSON-lines file; blank lines are skipped.

    A line that is not JSON raises DataError naming the file and line, or, with ``lenient``
    (a log that a kill may have cut mid-line), is dropped; a missing file then gives ``[]``.
    """
    path = Path(path)
    if lenient and not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if lenient:
                    continue
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); the file is corrupt") from None
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any], *, strict: bool = False) -> None:
    """Write ``rows`` one JSON object per line, atomically (``strict``: NaN/inf as null)."""
    atomic_write_text(path, "".join(json.dumps(json_safe(r) if strict else r) + "\n" for r in rows))
