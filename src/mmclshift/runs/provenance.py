"""How a results folder was made: the command, its commit, its measured wall time and machine.

A reproduction (``mmclshift demo``, ``make reproduce``) may take several invocations: it resumes
where it stopped. Each invocation appends one entry to ``<out>/provenance.json`` (:func:`record_invocation`)
and the file's top-level ``wall_seconds`` is the sum over them, so a reproduction finished
across sessions reports the time it really took. The top level always has the keys
:data:`PROVENANCE_KEYS` (from the latest invocation, besides the summed wall time).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

from mmclshift.errors import UserError
from mmclshift.runs.atomic import atomic_write_text
from mmclshift.runs.environment import environment_info

PROVENANCE_FILE = "provenance.json"
#: what every provenance.json states at its top level
PROVENANCE_KEYS = ("commit", "command", "wall_seconds", "machine", "n_train", "steps")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(*, device: str, workers: int, threads: int) -> dict[str, Any]:
    """The machine a reproduction ran on, in the terms its wall time depends on."""
    env = environment_info(device=device)
    info = {"cpu": cpu_model(), "cpu_count": env["cpu_count"], "device": device,
            "workers": workers, "torch_threads_per_worker": threads, "platform": env["platform"],
            "python": env["python"], "torch": env["torch"]}
    if "gpu" in env and device.startswith("cuda"):
        info["gpu"] = env["gpu"]
    return info


def read_json_file(path: Path, what: str, missing: str) -> Any:
    """The JSON in ``path``; missing (``"<path>: no <missing>"``) or unreadable
    (``"<path>: cannot read <what> (...)"``) is a one-line :class:`UserError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read {what} ({exc})") from None


def read_provenance(folder: str | Path) -> dict[str, Any]:
    """``folder/provenance.json``; a missing, unreadable or incomplete file is a one-line error."""
    path = Path(folder) / PROVENANCE_FILE
    data = read_json_file(path, "provenance", "provenance (a reproduction writes it when it finishes)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: provenance is not a JSON object")
    missing = [k for k in PROVENANCE_KEYS if k not in data]
    if missing:
        raise UserError(f"{path}: provenance lacks {', '.join(missing)}")
    wrong = [k for k, kind in (("wall_seconds", (int, float)), ("machine", dict), ("n_train", int),
                               ("steps", int), ("invocations", list))
             if k in data and (not isinstance(data[k], kind) or isinstance(data[k], bool))]
    if wrong:
        raise UserError(f"{path}: provenance key(s) of the wrong type: {', '.join(wrong)}")
    return data


def record_invocation(folder: str | Path, *, command: str, wall_seconds: float, started: str,
                      commit: str | None, machine: dict[str, Any], n_train: int, steps: int,
                      note: str | None = None) -> dict[str, Any]:
    """Append one invocation to ``folder/provenance.json`` (atomically) and return the file's content.

    ``wall_seconds`` is this invocation's; the top level sums all of them. ``started`` is an ISO
    time (UTC). An existing file that cannot be read is an error (never overwritten).
    """
    path = Path(folder) / PROVENANCE_FILE
    entries: list[dict[str, Any]] = []
    if path.exists():
        entries = list(read_provenance(folder).get("invocations", []))
    entry = {"command": command, "commit": commit, "started": started,
             "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
             "wall_seconds": round(float(wall_seconds), 1), "machine": machine,
             "n_train": int(n_train), "steps": int(steps)}
    if note:
        entry["note"] = note
    entries.append(entry)
    data = {"commit": commit, "command": command,
            "wall_seconds": round(sum(e["wall_seconds"] for e in entries), 1),
            "machine": machine, "n_train": int(n_train), "steps": int(steps),
            "invocations": entries}
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return data
