"""Thread policy: how many torch CPU threads each tier runs with.

Small tensor programs (the theory tier's d <= 100 linear models, a batched sweep's stacked
16 x 16 matrices, the semi-synthetic tier's small CNN) run fastest on one thread: the work per op
is far below what pays for splitting it, and on shared cores a second thread waits for a busy
core at every op (3-80x slower measured on 2 shared cores; see docs/performance.md). The
real-data tier's ResNets and ViTs are large enough to use every core.

Each tier's config has a ``threads`` key (0: leave torch's setting); :data:`TIER_THREADS` holds
the defaults and :func:`torch_threads` applies a setting for the duration of a run and restores
the previous one afterwards, so a library caller's own setting survives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: default torch CPU threads per tier (0: leave torch's setting, i.e. all cores)
TIER_THREADS: dict[str, int] = {
    "theory": 1,         # linear MMCL / SL on synthetic data, one job at a time
    "batched": 1,        # a sweep's jobs stacked into one tensor program (sweeps.runner)
    "semisynthetic": 1,  # the small CNN of the Figure 2 grid
    "real": 0,           # OpenCLIP towers on real images
}


def check_threads(value: int) -> str | None:
    """Config check for a ``threads`` key."""
    return None if value >= 0 else "must be >= 0 (0: leave torch's setting)"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the body with ``threads`` torch CPU threads (None or 0: unchanged); restore afterwards.

    Yields the number of threads in effect.
    """
    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


__all__ = ["TIER_THREADS", "check_threads", "torch_threads"]
