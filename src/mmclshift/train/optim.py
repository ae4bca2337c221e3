"""The optimisers and the learning-rate schedule every trainer builds from.

:data:`OPTIMIZERS` maps a config's ``optimizer`` name to its PyTorch class; :func:`make_optimizer`
builds one (the linear, semi-synthetic, stacked and batched trainers; the real-data trainer adds
OpenCLIP's betas, eps and weight-decay groups). :func:`warmup_cosine` is the learning-rate factor
of a linear warm-up then a cosine decay to 0 (OpenCLIP's default schedule).
:func:`check_finite_loss` stops every trainer the same way when its loss diverges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mmclshift.errors import UserError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "lbfgs": torch.optim.LBFGS,
}

# L-BFGS as the linear trainer runs it: full batch, strong-Wolfe line search, tight tolerances
_LBFGS = {"max_iter": 20, "history_size": 50, "tolerance_grad": 1e-12, "tolerance_change": 1e-15,
          "line_search_fn": "strong_wolfe"}


def make_optimizer(params: Iterable[Any], name: str, lr: float, *, weight_decay: float = 0.0,
                   momentum: float = 0.0, fused: bool = False, **options: Any) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name]`` over ``params`` (tensors or parameter groups).

    ``weight_decay`` and ``fused`` apply to Adam/AdamW (``weight_decay`` also to SGD),
    ``momentum`` to SGD; ``options`` go to the constructor as given (betas, eps).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (one of {', '.join(OPTIMIZERS)})")
    if name == "lbfgs":
        return torch.optim.LBFGS(params, lr=lr, **{**_LBFGS, **options})
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **options)
    if fused:
        options["fused"] = True
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, **options)


def warmup_cosine(step: int, steps: int, warmup_steps: int = 0, *, cosine: bool = True) -> float:
    """Learning-rate factor at ``step`` (0-based) of ``steps``: linear warm-up over
    ``warmup_steps``, then a cosine decay to 0 at ``steps`` (constant 1 if not ``cosine``)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class NonFiniteLoss(UserError, FloatingPointError):
    """A training loss became NaN or infinite (the run stops there; nothing is marked done)."""


def check_finite_loss(value: float, what: str, step: int, *, lr_key: str = "train.lr") -> None:
    """Stop training with a one-line :class:`NonFiniteLoss` naming ``what`` (the method or cell)
    and the step when ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteLoss(f"{what}: loss became {value} at step {step}; lower {lr_key}")


__all__ = ["OPTIMIZERS", "NonFiniteLoss", "check_finite_loss", "make_optimizer", "warmup_cosine"]
