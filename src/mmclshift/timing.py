"""Fair timing for the benchmarks in ``benchmarks/``: warm-up excluded, arms interleaved.

On shared cores the load changes from second to second, so two loops timed one after the other
measure the load as much as the code. :func:`interleave` runs every arm once per repeat, rotating
which goes first, after a warm-up call of each that is discarded; :func:`ratios` pairs the arms
repeat by repeat, and :func:`summary` prints min and median. A benchmark's last line is
``ratio: <median of the per-repeat ratios>`` (ours over the baseline, higher is better).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Mapping, Sequence


def interleave(arms: Mapping[str, Callable[[int], float]], repeats: int, *,
               warmup: bool = True, report: Callable[[str], None] | None = print) -> dict[str, list[float]]:
    """{arm: [value per repeat]}; ``arm(r)`` runs repeat ``r`` (-1: warm-up) and returns its value.

    Repeat ``r`` starts with arm ``r mod len(arms)`` (a rotation), so no arm always runs first or
    last. ``report`` gets one line per repeat (None: silent).
    """
    names = list(arms)
    if warmup:
        for name in names:
            arms[name](-1)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        for name in order:
            out[name].append(arms[name](r))
        if report is not None:
            report(f"repeat {r} ({' -> '.join(order)}): "
                   + ", ".join(f"{name} {out[name][-1]:.4g}" for name in names)
                   + f"; load {load():.2f}")
    return out


def ratios(ours: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool = True) -> list[float]:
    """Per-repeat ratios ours/baseline (rates) or baseline/ours (times), so higher is better."""
    pairs = zip(ours, baseline, strict=True)
    return [o / b if higher_is_better else b / o for o, b in pairs]


def summary(name: str, values: Sequence[float], unit: str = "") -> str:
    """``name: min X, median Y unit (n repeats)``."""
    return (f"{name}: min {min(values):.4g}, median {statistics.median(values):.4g}"
            f"{' ' + unit if unit else ''} ({len(values)} repeats)")


def load() -> float:
    """The 1-minute load average (what the machine was doing while it was measured)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without it
        return float("nan")


__all__ = ["interleave", "load", "ratios", "summary"]
