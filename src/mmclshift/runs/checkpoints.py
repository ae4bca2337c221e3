"""Checkpoint files: written atomically, read with ``weights_only=True`` and one-line errors."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmclshift.errors import DataError
from mmclshift.runs.atomic import atomic_write_bytes, first_line


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` through a temp file and an atomic rename."""
    import torch

    buf = io.BytesIO()
    torch.save(dict(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    A missing, truncated or corrupt file, or one that holds anything but tensors and plain
    containers (a pickled object), raises :class:`DataError` naming the file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        why = [ln.split("error:", 1)[-1].strip() for ln in str(exc).splitlines()
               if "WeightsUnpickler error" in ln]
        raise DataError(f"{path}: checkpoint refused by weights_only loading: it holds more than "
                        f"tensors and plain containers ({why[0] if why else 'a pickled object'})"
                        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: truncated or corrupt checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a checkpoint (holds a {type(state).__name__}, not a mapping)")
    return state
