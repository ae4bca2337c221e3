"""The explicit registry of experiment kinds.

``CONFIG_KINDS`` maps the ``kind:`` key of a YAML config to its root config dataclass;
``RUNNERS`` maps it to the function that runs one experiment into a run directory and returns
its result records (one per method and test split; see :mod:`mmclshift.runs` for the schema).
Each tier registers its kinds here explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONFIG_KINDS: dict[str, type] = {}
RUNNERS: dict[str, Callable[..., list[dict[str, Any]]]] = {}
