"""Plain-text tables for the terminal."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def format_value(v: Any, digits: int = 4) -> str:
    """One cell: ``-`` for missing (None, NaN), whole numbers >= 2 stored as floats without decimals
    (a step count prints as ``300``, never ``300.0000``), other floats with ``digits`` decimals."""
    if v is None:
        return "-"
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isnan(v):
            return "-"
        if math.isfinite(v) and v.is_integer() and abs(v) >= 2:
            return str(int(v))
        return f"{v:.{digits}f}"
    return str(v)


_fmt = format_value


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                 title: str | None = None) -> str:
    """A fixed-width table of ``columns`` from ``rows`` (missing values print as '-')."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(lines)
