"""One training loop for image models: MMCL (image-caption pairs) and SL (image-label pairs).

Both methods go through :func:`train_loop` with the same optimiser, step count, batch size,
minibatch order and augmentation (random translations of up to ``max_shift`` pixels), so the
only difference between them is the loss: CLIP's symmetric InfoNCE with a learnable temperature
(:func:`mmclshift.losses.clip_loss`, open_clip's ``ClipLoss``) or the paper's linear contrastive
loss (:func:`mmclshift.losses.linear_mmcl_loss`, with ``W_I``/``W_T`` the encoders' final linear
projections) for MMCL; cross-entropy on digit labels for SL.

Progress: a tqdm bar with samples/s; losses go to metrics.jsonl (via ``log``) and to a
TensorBoard event file in the run directory (via ``writer``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmclshift.config import nonnegative, param, positive
from mmclshift.losses import (
    clip_loss,
    cross_entropy_loss,
    intra_class_ablation_loss,
    linear_mmcl_loss,
)
from mmclshift.train.optim import check_finite_loss, make_optimizer, warmup_cosine

Logger = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Optimisation shared by MMCL and SL (matched: same optimiser, steps, batches, augmentation)."""

    steps: int = param(300, help="optimisation steps", check=positive)
    batch_size: int = param(128, help="minibatch size (pairs for MMCL, images for SL)", check=positive)
    optimizer: Literal["adamw", "adam", "sgd"] = param("adamw", help="optimiser")
    lr: float = param(1e-3, help="learning rate", check=positive)
    weight_decay: float = param(1e-4, help="weight decay", check=nonnegative)
    warmup_steps: int = param(0, help="linear warm-up steps, then cosine decay", check=nonnegative)
    cosine: bool = param(True, help="cosine learning-rate decay to 0 over the steps")
    augment: bool = param(True, help="random translations of the training images")
    max_shift: int = param(2, help="largest translation in pixels", check=nonnegative)
    log_every: int = param(50, help="log the training loss every this many steps", check=positive)
    checkpoint_every: int = param(0, help="stacked grids: checkpoint every cell of a stack every this "
                                  "many steps, so a rerun resumes there (0: never)", check=nonnegative)
    eval_every: int = param(0, help="evaluate every this many steps (and at the end) on a fixed test "
                            "subset, logging learning curves as 'curve' records (0: never)",
                            check=nonnegative)
    eval_subset: int = param(1000, help="test images per split for the learning curves: a fixed "
                             "random subset (seed 0) of each test split (0: all)", check=nonnegative)


@dataclass
class MMCLLossConfig:
    """The MMCL objective."""

    loss: Literal["clip", "linear"] = param("clip", help="clip: CLIP's InfoNCE (open_clip ClipLoss); "
                                            "linear: the paper's linear contrastive loss")
    temperature: float = param(0.07, help="initial temperature of the CLIP loss", check=positive)
    learn_temperature: bool = param(True, help="learn the temperature (CLIP's logit_scale)")
    max_logit_scale: float = param(100.0, help="clamp exp(logit_scale) to this (as CLIP does)", check=positive)
    rho: float = param(1.0, help="regulariser rho of the linear loss", check=positive)


def optimizer_for(params: list[nn.Parameter], cfg: TrainConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params`` (SGD with momentum 0.9); ``fused`` selects PyTorch's fused
    Adam/AdamW kernel (the same update up to float rounding)."""
    return make_optimizer(params, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9,
                          fused=fused and cfg.optimizer in ("adam", "adamw"))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate factor at ``step``: :func:`~mmclshift.train.optim.warmup_cosine` of ``cfg``."""
    return warmup_cosine(step, cfg.steps, cfg.warmup_steps, cosine=cfg.cosine)


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own integer offset in [-max_shift, max_shift]^2, zero-filled.

    The offsets are drawn from ``generator`` (rows, then columns); each output pixel is one pixel
    of the zero-padded input, gathered along its flattened spatial axis (a pure copy).
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    wp = w + 2 * s
    # flat index into the padded (h + 2s) x (w + 2s) image of output pixel (i, j): (dy+i)*wp + dx+j
    base = (torch.arange(h, device=x.device)[:, None] * wp + torch.arange(w, device=x.device)[None]).reshape(1, -1)
    idx = (base + (dy * wp + dx)[:, None]).unsqueeze(1).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, idx).view(n, c, h, w)


def batches(n: int, cfg: TrainConfig, generator: torch.Generator):
    """Yield ``cfg.steps`` index tensors: epochs of a random permutation, drop-last (full batches)."""
    bs = min(cfg.batch_size, n)
    perm, pos = torch.randperm(n, generator=generator), 0
    for _ in range(cfg.steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        yield perm[pos: pos + bs]
        pos += bs


def train_loop(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               images: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
               generator: torch.Generator, *, method: str, device: torch.device,
               progress: bool = True, log: Logger | None = None, writer: Any = None,
               after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """Minimise ``loss_fn(x_batch, target_batch)`` over ``model``'s parameters.

    ``images`` are uint8 (n, 3, H, W) on any device; ``targets`` are caption tokens (MMCL) or
    labels (SL). Returns throughput figures.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer_for(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    n = images.shape[0]
    bar = tqdm(total=cfg.steps, desc=f"train {method}", unit="step", disable=not progress,
               leave=False, dynamic_ncols=True)
    seen, t0, running = 0, time.perf_counter(), None
    for step, idx in enumerate(batches(n, cfg, generator)):
        x = images[idx].to(device, non_blocking=True).float().div_(255.0)
        if cfg.augment:
            x = random_translate(x, cfg.max_shift, generator)
        y = targets[idx].to(device, non_blocking=True)
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        seen += len(idx)
        value = float(loss.detach())
        check_finite_loss(value, method, step)
        running = value if running is None else 0.9 * running + 0.1 * value
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            if log is not None:
                log({"event": "train", "method": method, "step": step, "loss": value,
                     "samples_per_s": rate, "lr": sched.get_last_lr()[0]})
            if writer is not None:
                writer.add_scalar(f"{method}/loss", value, step)
                writer.add_scalar(f"{method}/samples_per_s", rate, step)
        if progress:
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", samples_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "samples_per_s": seen / max(elapsed, 1e-9), "final_loss": running or 0.0}


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The MMCL objectives of a two-tower model: (model, image embeddings, text embeddings, cfg) -> loss
MMCL_LOSSES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor, MMCLLossConfig], torch.Tensor]] = {
    "clip": lambda model, z_img, z_txt, cfg: clip_loss(z_img, z_txt, model.logit_scale.exp()),
    "linear": lambda model, z_img, z_txt, cfg: linear_mmcl_loss(
        z_img, z_txt, model.image.proj.weight, model.text.proj.weight, cfg.rho),
}


def mmcl_loss_fn(model: nn.Module, cfg: MMCLLossConfig) -> LossFn:
    """The MMCL objective ``cfg.loss`` (:data:`MMCL_LOSSES`, chosen once) for a
    :class:`~mmclshift.models.towers.TwoTowerModel`."""
    objective = MMCL_LOSSES[cfg.loss]

    def loss(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return objective(model, model.image(x), model.text(tokens), cfg)

    return loss


def no_intra_loss_fn(model: nn.Module) -> LossFn:
    """CLIP's loss without same-class negatives, on targets = tokens with the label appended."""

    def loss(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        tokens, labels = targets[:, :-1], targets[:, -1]
        return intra_class_ablation_loss(model.image(x), model.text(tokens), model.logit_scale.exp(), labels)

    return loss


def clamp_logit_scale(model: nn.Module, cfg: MMCLLossConfig) -> Callable[[], None]:
    limit = math.log(cfg.max_logit_scale)

    def clamp() -> None:
        if isinstance(model.logit_scale, nn.Parameter):
            with torch.no_grad():
                model.logit_scale.clamp_(0, limit)

    return clamp


def sl_loss_fn(model: nn.Module) -> LossFn:
    def loss(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(model(x), labels)

    return loss


@dataclass(frozen=True)
class ImageMethod:
    """One method of the image tier: its loss on a model, its training targets from a split
    (anything with ``tokens`` and ``labels``), and whether it is contrastive (two towers, a
    temperature clamped after every step)."""

    loss: Callable[[nn.Module, MMCLLossConfig], LossFn]
    targets: Callable[[Any], torch.Tensor]
    contrastive: bool


def _tokens_and_labels(split: Any) -> torch.Tensor:
    """Caption tokens with the digit label appended as the last column (``no_intra_loss_fn``'s targets)."""
    return torch.cat([split.tokens, split.labels.to(split.tokens.dtype)[:, None]], dim=1)


# The image tier's methods, in the order a run trains them.
IMAGE_METHODS: dict[str, ImageMethod] = {
    "mmcl": ImageMethod(mmcl_loss_fn, lambda split: split.tokens, contrastive=True),
    "sl": ImageMethod(lambda model, _cfg: sl_loss_fn(model), lambda split: split.labels, contrastive=False),
    "mmcl_no_intra": ImageMethod(lambda model, _cfg: no_intra_loss_fn(model), _tokens_and_labels,
                                 contrastive=True),
}
