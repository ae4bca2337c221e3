"""The explicit registry of experiment kinds.

:data:`TIERS` maps the ``kind:`` key of a YAML config to the module that implements it; one line
registers a kind. From it, ``CONFIG_KINDS`` maps a kind to its root config dataclass (the
module's ``CONFIG_KINDS[kind]``); ``RUNNERS`` to the function that runs one experiment into a run
directory and returns its result records (``run_experiment``; one record per method and test
split, see :mod:`mmclshift.runs` for the schema); ``THEORY`` to its closed-form predictions
(``predict_theory``, where the tier has a theory); ``SMOKE`` to the function(config, out_dir) that
rewrites a config to run on built-in fixtures (``smoke_config``, for ``--smoke``).

A tier's module (and torch with it) is imported only when one of its kinds is looked up, so
importing this registry costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

#: experiment kind -> the module implementing it
TIERS: dict[str, str] = {
    "clip_real": "mmclshift.experiments.real",
    "data_model_1": "mmclshift.experiments.synthetic",
    "data_model_2": "mmclshift.experiments.synthetic",
    "semisynthetic": "mmclshift.experiments.semisynthetic",
}


class _Registry(Mapping[str, Any]):
    """kind -> one thing its tier module provides; the module is imported on first look-up.

    Its keys are ``kinds`` (default: every kind in :data:`TIERS`), known without importing.
    """

    def __init__(self, attribute: str, *, per_kind: bool = False,
                 kinds: Sequence[str] | None = None) -> None:
        self._attribute = attribute
        self._per_kind = per_kind  # the attribute is a dict keyed by kind (CONFIG_KINDS)
        self._kinds = tuple(TIERS if kinds is None else kinds)

    def __getitem__(self, kind: str) -> Any:
        if kind not in self._kinds:
            raise KeyError(kind)
        value = getattr(importlib.import_module(TIERS[kind]), self._attribute)
        return value[kind] if self._per_kind else value

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


CONFIG_KINDS: Mapping[str, type] = _Registry("CONFIG_KINDS", per_kind=True)
RUNNERS: Mapping[str, Callable[..., list[dict[str, Any]]]] = _Registry("run_experiment")
THEORY: Mapping[str, Callable[..., list[dict[str, Any]]]] = _Registry(
    "predict_theory", kinds=("data_model_1", "data_model_2"))
SMOKE: Mapping[str, Callable[..., Any]] = _Registry("smoke_config", kinds=("clip_real",))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Read a config file of any registered kind, with ``key=value`` overrides applied."""
    from mmclshift import config

    return config.load_config(path, overrides, CONFIG_KINDS)


def build_config(data: Mapping[str, Any], *, source: str = "<config>") -> Any:
    """Validate plain config data of any registered kind."""
    from mmclshift import config

    return config.build_config(data, CONFIG_KINDS, source=source)


def run(config: Any, out_dir: str | Path, *, force: bool = False,
        **kwargs: Any) -> list[dict[str, Any]]:
    """Run one experiment of any registered kind into ``out_dir``; return its result records.

    A run directory that already holds this config finished is not run again: its eval records
    are returned. One holding another config is refused (``force``: moved aside first).
    """
    from mmclshift import runs
    from mmclshift.errors import UserError

    kind = getattr(config, "kind", None)
    if kind not in RUNNERS:
        raise UserError(f"no runner for experiment kind {kind!r}")
    if runs.is_main_process():
        if runs.check_run_dir(out_dir, config, force=force) == "done":
            return runs.eval_records(out_dir)
    return RUNNERS[kind](config, str(out_dir), **kwargs)


def predict_theory(config: Any) -> list[dict[str, Any]]:
    """The theory's predictions for a config whose kind has a theory."""
    from mmclshift.errors import UserError

    kind = getattr(config, "kind", None)
    if kind not in THEORY:
        raise UserError(
            f"config kind {kind!r} has no closed-form theory (kinds with one: {', '.join(sorted(THEORY))})"
        )
    return THEORY[kind](config)


def cross_covariance(config: Any) -> tuple[list[str], Any]:
    """(feature names, C^Tr) for a config whose kind has a theory."""
    from mmclshift.errors import UserError
    from mmclshift.experiments import synthetic

    if getattr(config, "kind", None) not in synthetic.CONFIG_KINDS:
        raise UserError(f"config kind {config.kind!r} has no closed-form C^Tr")
    return synthetic.describe_cross_covariance(config)
