"""Fair timing for the benchmarks in ``benchmarks/``: warm-up excluded, arms interleaved.

On shared cores the load changes from second to second, so two loops timed one after the other
measure the load as much as the code. :func:`interleave` runs every arm once per repeat, rotating
which goes first, after a warm-up call of each that is discarded; :func:`ratios` pairs the arms
repeat by repeat, and :func:`summary` prints min and median. A benchmark's last line is
``ratio: <median of the per-repeat ratios>`` (ours over the baseline, higher is better).

Single-threaded loops can also be timed in CPU seconds (:class:`Stopwatch`): on an
oversubscribed machine their wall time is mostly time spent waiting for a core, and the CPU time
of a one-thread process is the time it spent computing. Benchmarks that time in CPU seconds say
so and print the wall-clock ratio beside it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence


class Stopwatch:
    """Wall-clock and process CPU seconds of a ``with`` block."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


Measure = float | Mapping[str, float]


def _fmt(value: Measure) -> str:
    if isinstance(value, Mapping):
        return " ".join(f"{k} {v:.4g}" for k, v in value.items())
    return f"{value:.4g}"


def interleave(arms: Mapping[str, Callable[[int], Measure]], repeats: int, *,
               warmup: bool = True, report: Callable[[str], None] | None = print) -> dict[str, list[Measure]]:
    """{arm: [value per repeat]}; ``arm(r)`` runs repeat ``r`` (-1: warm-up) and returns its
    value (a number, or a mapping such as ``{"wall": ..., "cpu": ...}``).

    Repeat ``r`` starts with arm ``r mod len(arms)`` (a rotation), so no arm always runs first or
    last. ``report`` gets one line per repeat (None: silent).
    """
    names = list(arms)
    if warmup:
        for name in names:
            arms[name](-1)
    out: dict[str, list[Measure]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        for name in order:
            out[name].append(arms[name](r))
        if report is not None:
            report(f"repeat {r} ({' -> '.join(order)}): "
                   + ", ".join(f"{name} {_fmt(out[name][-1])}" for name in names)
                   + f"; load {load():.2f}")
    return out


def column(values: Sequence[Measure], key: str) -> list[float]:
    """One field of mapping-valued measures."""
    return [float(v[key]) for v in values]  # type: ignore[index]


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


__all__ = ["Stopwatch", "column", "interleave", "load", "ratios", "summary"]
