"""The explicit registry of experiment kinds.

``CONFIG_KINDS`` maps the ``kind:`` key of a YAML config to its root config dataclass;
``RUNNERS`` maps it to the function that runs one experiment into a run directory and returns
its result records (one per method and test split; see :mod:`mmclshift.runs` for the schema).
Each tier registers its kinds here explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

CONFIG_KINDS: dict[str, type] = {}
RUNNERS: dict[str, Callable[..., list[dict[str, Any]]]] = {}
THEORY: dict[str, Callable[..., list[dict[str, Any]]]] = {}
#: kind -> function(config, out_dir) -> config rewritten to run on built-in fixtures (``--smoke``)
SMOKE: dict[str, Callable[..., Any]] = {}


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


def predict(config: Any) -> list[dict[str, Any]]:
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


def _register_builtin() -> None:
    from mmclshift.experiments import real

    for kind, cls in real.CONFIG_KINDS.items():
        CONFIG_KINDS[kind] = cls
        RUNNERS[kind] = real.run_experiment
        SMOKE[kind] = real.smoke_config

    from mmclshift.experiments import semisynthetic, synthetic

    for kind, cls in synthetic.CONFIG_KINDS.items():
        CONFIG_KINDS[kind] = cls
        RUNNERS[kind] = synthetic.run_experiment
        THEORY[kind] = synthetic.predict

    for kind, cls in semisynthetic.CONFIG_KINDS.items():
        CONFIG_KINDS[kind] = cls
        RUNNERS[kind] = semisynthetic.run_experiment


_register_builtin()
