"""What produced a run: seeds, versions, host, git revision, the process's rank."""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import os
import platform
import random
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a fresh CPU generator seeded with ``seed``."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=8)
def git_revision(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd`` (once per process and folder), or None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict[str, Any]:
    """The parts of :func:`environment_info` that cannot change within a process."""
    import numpy as np
    import torch

    import mmclshift

    info: dict[str, Any] = {
        "mmclshift": mmclshift.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "git_revision": git_revision(Path(__file__).parent.parent),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for name, dist in (("torchvision", "torchvision"), ("open_clip", "open_clip_torch"),
                       ("scipy", "scipy"), ("pandas", "pandas")):
        try:  # read from the installed metadata: importing open_clip just for this costs seconds
            info[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None  # not installed
    return info


def environment_info(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """What produced a run: versions, hardware, seed, git revision (gathered once per process)."""
    import torch

    info = dict(_static_environment())
    info.update({
        "device": device or ("cuda" if info["cuda_available"] else "cpu"),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    return info


def debug_enabled() -> bool:
    """``MMCLSHIFT_DEBUG`` is set (``mmclshift --debug`` sets it): errors a fast path would
    survive (falling back to its slow path) are raised instead, with their traceback."""
    return os.environ.get("MMCLSHIFT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def is_main_process() -> bool:
    """False in the non-zero ranks of a ``torchrun`` / SLURM job (rank 0 owns the run dir)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0
