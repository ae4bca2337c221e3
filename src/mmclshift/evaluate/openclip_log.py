"""Quieten OpenCLIP's log records, and only those, while a model is created.

OpenCLIP has no logger of its own: ``open_clip/factory.py``, ``model.py`` and ``timm_model.py``
call the module-level ``logging.info``/``logging.warning``, which log on the *root* logger (a
randomly initialised model, as every model trained here is, gets "No pretrained weights loaded
... initialized randomly"). Raising the root logger's level would silence every library and the
user's own logging. :func:`quiet_open_clip` instead puts a filter on the root logger, for the
duration of a ``with`` block, that drops the records below ERROR whose source file lies in the
``open_clip`` package; records of other code, and OpenCLIP's errors, pass as before. While the
block runs, a root logger with no handlers gets a :class:`logging.NullHandler`, so that
OpenCLIP's first ``logging.info`` does not call ``logging.basicConfig`` and leave a stderr
handler on the root logger for the rest of the process. Both are removed on exit: the root
logger's level, filters and handlers are as they were.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec

#: Packages whose records :func:`quiet_open_clip` drops.
QUIETENED_PACKAGES = ("open_clip",)


def _package_dirs(names: tuple[str, ...]) -> tuple[str, ...]:
    """Source directories of the installed packages ``names`` (each with a trailing separator,
    as given and resolved)."""
    dirs: set[str] = set()
    for name in names:
        spec = find_spec(name)
        for d in (spec.submodule_search_locations or []) if spec is not None else []:
            dirs.update({os.path.join(d, ""), os.path.join(os.path.realpath(d), "")})
    return tuple(sorted(dirs))


class PackageFilter(logging.Filter):
    """Drops records below ``level`` logged from source files under the given packages."""

    def __init__(self, packages: tuple[str, ...] = QUIETENED_PACKAGES,
                 level: int = logging.ERROR) -> None:
        super().__init__()
        self.dirs = _package_dirs(packages)
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not record.pathname.startswith(self.dirs)


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Within the block, OpenCLIP's records below ERROR are dropped; nothing else changes."""
    root = logging.getLogger()
    quiet = PackageFilter()
    guard = logging.NullHandler() if not root.handlers else None
    root.addFilter(quiet)
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        if guard is not None:
            root.removeHandler(guard)
