"""What a run computes: its identity (the config without :data:`VOLATILE_KEYS`) and hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mmclshift.config import to_dict

#: config keys that change only where or how visibly a run executes, not what it computes
VOLATILE_KEYS = ("device", "threads", "progress", "train.device", "train.resume", "data.workers",
                 "data.prefetch", "grid.stacked", "save_checkpoints", "train.checkpoint_every")


def config_hash(config: Any, length: int = 12) -> str:
    """Stable hash of a resolved config (dataclass or plain data)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_identity(config: Any) -> dict[str, Any]:
    """The part of a resolved config that decides what a run computes (no :data:`VOLATILE_KEYS`)."""
    data = json.loads(json.dumps(to_dict(config), default=str))
    if not isinstance(data, dict):
        return {}
    for key in VOLATILE_KEYS:
        *parents, last = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def identity_hash(config: Any, length: int = 16) -> str:
    """Hash of :func:`run_identity`: equal for configs that compute the same run."""
    blob = json.dumps(run_identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_dir_name(config: Any, prefix: str) -> str:
    """``<prefix>-<identity hash>``: the directory name of a run (or grid, or sweep job).

    Named by :func:`identity_hash`, so a rerun that differs only in :data:`VOLATILE_KEYS`
    (threads, device, loader workers, ...) finds, and reuses, the same directory.
    """
    return f"{prefix}-{identity_hash(config, 12)}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs."""
    a, b = _flatten(dict(old)), _flatten(dict(new))
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = [("(absent)" if v is missing else json.dumps(v, default=str)) for v in (va, vb)]
            out.append(f"{key}: {show[0]} -> {show[1]}")
    return out
