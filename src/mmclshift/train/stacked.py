"""Many small image models trained at once: the cells of a Figure 2 grid as one stacked program.

The cells of a pi_core x pi_spu x seeds grid share their architecture, optimiser settings and,
per seed, their training images; they differ in their captions, their initial weights (per seed)
and their minibatch/augmentation stream (per seed). :func:`train_stacked` trains C such models
together:

* **Parameters** of the C models are stacked along a leading cell axis (``(C, *shape)``) and
  optimised by one optimiser over the stacked tensors. AdamW, Adam and SGD with momentum are
  elementwise and the cells share no parameters, while the loss is the *sum* of the cells'
  losses, so each cell's gradient, optimiser state and update are its own: the slice ``[c]`` of
  every stacked tensor follows the trajectory the cell would follow alone (up to float rounding
  of the batched kernels).
* **RNG streams**: each cell names its minibatch/augmentation stream by a seed (in a grid, the
  run's ``seed + 1``, as :func:`mmclshift.train.images.train_loop` is given). Cells whose stream
  seeds and training images are equal draw identical minibatches and translations, so the draws
  are made once per such *group* (with :func:`~mmclshift.train.images.batches` and
  :func:`~mmclshift.train.images.random_translate`, in the order the one-cell loop makes them)
  and shared by its cells; each cell's captions (or labels) are indexed with the group's indices.
* **Forward** (:class:`StackedSmallCNN`, :class:`StackedBagOfWords`): a group's cells see the same
  input batch (moved, scaled and translated once per group); the convolutions run per cell (see
  :class:`StackedSmallCNN`); the fully connected layers, the text tower and the losses are
  batched matmuls.

What stacks (:func:`unstackable_reason`): ``small_cnn`` image towers (any ``image_size``) with the ``bow``
text tower, the ``clip`` or ``linear`` MMCL loss, and SL (the same image encoder plus a linear
head). Any other architecture returns a reason, and the caller trains those cells one at a time.

After training, each cell's parameters are copied back into its own ``nn.Module``, so evaluation,
checkpoints and run directories are those of the one-at-a-time path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmclshift.models.towers import (
    BagOfWords,
    SmallCNN,
    SupervisedModel,
    TwoTowerModel,
    _Resized,
    conv3x3_pool_relu,
)
from mmclshift.train.images import (
    Logger,
    MMCLLossConfig,
    TrainConfig,
    batches,
    lr_factor,
    optimizer_for,
    random_translate,
)
from mmclshift.train.optim import check_finite_loss


@dataclass
class StackedCell:
    """One model of a stack: its module (trained in place), targets and RNG stream.

    ``targets`` are caption tokens (n, L) for MMCL or labels (n,) for SL, aligned with
    ``images`` (uint8 (n, 3, H, W)); ``stream_seed`` seeds the cell's minibatch/augmentation
    generator (as ``torch.Generator().manual_seed(stream_seed)`` in the one-cell loop).
    ``log`` receives the cell's ``train`` records (as :func:`train_loop`'s ``log``).
    """

    model: nn.Module
    images: torch.Tensor
    targets: torch.Tensor
    stream_seed: int
    log: Logger | None = None
    name: str = ""  # how errors name the cell (its run)


# --------------------------------------------------------------------------- what stacks


def _cnn(model: nn.Module) -> tuple[SmallCNN, int | None] | None:
    """(SmallCNN, resize-to size or None) of a model's image tower, or None if it is not one."""
    tower = model.image.tower
    size = None
    if isinstance(tower, _Resized):
        tower, size = tower.tower, tower.size
    return (tower, size) if isinstance(tower, SmallCNN) else None


def unstackable_reason(model: nn.Module, method: str, mmcl: MMCLLossConfig | None = None) -> str | None:
    """Why ``model`` cannot be trained by :func:`train_stacked` (None: it can)."""
    if method == "mmcl":
        if not isinstance(model, TwoTowerModel):
            return f"{type(model).__name__} is not a two-tower model"
        if not isinstance(model.text.tower, BagOfWords):
            return f"text tower {type(model.text.tower).__name__} (only bow stacks)"
        if mmcl is not None and ("mmcl", mmcl.loss) not in STACKED_LOSSES:
            return f"MMCL loss {mmcl.loss!r}"
    elif method == "sl":
        if not isinstance(model, SupervisedModel):
            return f"{type(model).__name__} is not the SL model"
    else:
        return f"method {method!r}"
    if _cnn(model) is None:
        return f"image tower {type(model.image.tower).__name__} (only small_cnn stacks)"
    return None


def _parts(model: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """The model's parameters (and the temperature buffer) under the stacked program's names."""
    cnn, _ = _cnn(model)  # type: ignore[misc]
    out = {
        "conv1.w": cnn.features[0].weight, "conv1.b": cnn.features[0].bias,
        "conv2.w": cnn.features[3].weight, "conv2.b": cnn.features[3].bias,
        "fc.w": cnn.fc[1].weight, "fc.b": cnn.fc[1].bias,
        "proj_img.w": model.image.proj.weight,
    }
    if method == "mmcl":
        out["embed.w"] = model.text.tower.embed.weight
        out["proj_txt.w"] = model.text.proj.weight
        out["logit_scale"] = model.logit_scale
    else:
        out["head.w"] = model.head.weight
        out["head.b"] = model.head.bias
    return out


# --------------------------------------------------------------------------- stacked modules


class StackedSmallCNN:
    """C SmallCNN image encoders (+ projection ``W_I``) evaluated at once.

    ``group_sizes`` lists how many consecutive cells share one input batch; the input is a list
    of one (B, 3, H, W) batch per group, made channels-last once per group. The convolutions run
    per cell through :func:`~mmclshift.models.towers.conv3x3_pool_relu` (channels-last, ReLU after
    the pool), as in ``SmallCNN.forward``: on CPU this was measured faster than
    one grouped convolution over all cells, and than one convolution with a group's filters
    concatenated (or its im2col matmul); the fully connected layers and the projection are batched
    matmuls over the cells.
    """

    def __init__(self, group_sizes: Sequence[int], resize: int | None) -> None:
        self.group_sizes = list(group_sizes)
        self.resize = resize

    def __call__(self, p: dict[str, torch.Tensor], xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embeddings (C, B, p) for one input batch per group."""
        w1, b1 = p["conv1.w"].unbind(0), p["conv1.b"].unbind(0)
        w2, b2 = p["conv2.w"].unbind(0), p["conv2.b"].unbind(0)
        feats, c = [], 0
        for x, m in zip(xs, self.group_sizes, strict=True):
            if self.resize is not None and x.shape[-1] != self.resize:  # once per group
                x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last)  # once per group, not once per cell
            for _ in range(m):
                # each cell's convolutions exactly as SmallCNN.forward computes them
                h = conv3x3_pool_relu(conv3x3_pool_relu(x, w1[c], b1[c]), w2[c], b2[c])
                feats.append(h.contiguous().flatten(1))  # the cell's NCHW flatten order
                c += 1
        y = torch.stack(feats)  # (C, B, 2w*s*s)
        y = F.relu(torch.baddbmm(p["fc.b"].unsqueeze(1), y, p["fc.w"].transpose(1, 2)))
        return torch.bmm(y, p["proj_img.w"].transpose(1, 2))


def stacked_bag_of_words(p: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """C bag-of-words text encoders (+ ``W_T``) on per-cell tokens (C, B, L) -> (C, B, p).

    One ``embedding_bag`` over the cells' stacked vocabularies: cell ``c``'s word ``t`` is row
    ``c * V + t``; padding stays token 0, which ``padding_idx`` leaves out of the mean and the
    gradient (the BagOfWords mean over a caption's non-pad words).
    """
    c, vocab, width = p["embed.w"].shape
    b, length = tokens.shape[1:]
    offset = (torch.arange(c, device=tokens.device) * vocab).view(c, 1, 1)
    rows = torch.where(tokens != 0, tokens + offset, 0).reshape(c * b, length)
    h = F.embedding_bag(rows, p["embed.w"].reshape(c * vocab, width), mode="mean", padding_idx=0)
    return torch.bmm(h.view(c, b, width), p["proj_txt.w"].transpose(1, 2))


def stacked_clip_loss(z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Per-cell symmetric InfoNCE (open_clip's ClipLoss on each cell) -> (C,)."""
    zi, zt = F.normalize(z_img, dim=-1), F.normalize(z_txt, dim=-1)
    c, b, _ = zi.shape
    scale = logit_scale.view(c, 1, 1)
    per_image = scale * torch.bmm(zi, zt.transpose(1, 2))
    per_text = scale * torch.bmm(zt, zi.transpose(1, 2))
    target = torch.arange(b, device=zi.device).repeat(c)
    a = F.cross_entropy(per_image.reshape(c * b, b), target, reduction="none").view(c, b).mean(1)
    t = F.cross_entropy(per_text.reshape(c * b, b), target, reduction="none").view(c, b).mean(1)
    return 0.5 * (a + t)


def stacked_linear_loss(z_img: torch.Tensor, z_txt: torch.Tensor, w_img: torch.Tensor,
                        w_txt: torch.Tensor, rho: float) -> torch.Tensor:
    """Per-cell :func:`mmclshift.losses.linear_mmcl_loss` -> (C,)."""
    n = z_img.shape[1]
    if n < 2:
        raise ValueError("the contrastive loss needs a batch of at least 2 pairs")
    diag = (z_img * z_txt).sum((1, 2))
    total = (z_img.sum(1) * z_txt.sum(1)).sum(-1)
    reg = 0.5 * rho * (torch.bmm(w_img, w_img.transpose(1, 2)) * torch.bmm(w_txt, w_txt.transpose(1, 2))).sum((1, 2))
    return (total - diag) / (n * (n - 1)) - diag / n + reg


def stacked_sl_loss(z: torch.Tensor, head_w: torch.Tensor, head_b: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """Per-cell cross-entropy of the linear head on embeddings (C, B, p), labels (C, B) -> (C,)."""
    c, b, _ = z.shape
    logits = torch.baddbmm(head_b.unsqueeze(1), z, head_w.transpose(1, 2))
    return F.cross_entropy(logits.reshape(c * b, -1), labels.reshape(-1), reduction="none").view(c, b).mean(1)


StackedLoss = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, MMCLLossConfig], torch.Tensor]

#: The stacked methods: (method, MMCL loss; "" for SL) -> per-cell losses (C,) from the stacked
#: parameters, the image embeddings (C, B, p) and the cells' targets (tokens or labels).
STACKED_LOSSES: dict[tuple[str, str], StackedLoss] = {
    ("mmcl", "clip"): lambda p, z, tokens, mmcl: stacked_clip_loss(
        z, stacked_bag_of_words(p, tokens), p["logit_scale"].exp()),
    ("mmcl", "linear"): lambda p, z, tokens, mmcl: stacked_linear_loss(
        z, stacked_bag_of_words(p, tokens), p["proj_img.w"], p["proj_txt.w"], mmcl.rho),
    ("sl", ""): lambda p, z, labels, mmcl: stacked_sl_loss(z, p["head.w"], p["head.b"], labels),
}


def stacked_objective(method: str, mmcl: MMCLLossConfig) -> StackedLoss:
    """The registered per-cell loss of ``method`` (:data:`STACKED_LOSSES`)."""
    return STACKED_LOSSES[(method, mmcl.loss if method == "mmcl" else "")]


# --------------------------------------------------------------------------- training


def _groups(cells: Sequence[StackedCell]) -> list[list[int]]:
    """Cells that draw identical minibatches: equal stream seed and equal training images."""
    groups: list[list[int]] = []
    for i, cell in enumerate(cells):
        for g in groups:
            first = cells[g[0]]
            if first.stream_seed == cell.stream_seed and (
                    first.images is cell.images or (first.images.shape == cell.images.shape
                                                    and torch.equal(first.images, cell.images))):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def stack_optimizer(params: list[torch.Tensor], cfg: TrainConfig, *, fused: bool = True) -> torch.optim.Optimizer:
    """The stack's optimiser: ``cfg.optimizer`` over the stacked tensors; AdamW and Adam with
    ``fused=True`` (one kernel per tensor instead of a chain of elementwise ops; a whole stacked
    step of 36 full-MNIST cells measured 1.07x faster (CPU and wall clock), see
    benchmarks/stack_optimizer.py; the same update up to float rounding). SGD as
    :func:`~mmclshift.train.images.optimizer_for` builds it."""
    return optimizer_for(params, cfg, fused=fused)


def _advance(stream: Any, gen: torch.Generator, steps: int, cfg: TrainConfig) -> None:
    """Draw ``steps`` steps' minibatch indices and translations from a group's stream, as training does."""
    for _ in range(steps):
        idx = next(stream)
        if cfg.augment:  # the offsets random_translate draws (the images play no part in the draw)
            random_translate(torch.zeros(len(idx), 1, 1, 1), cfg.max_shift, gen)


def _cell_state(stacked: dict[str, torch.Tensor], trainable: list[str], opt: torch.optim.Optimizer,
                sched: Any, gen: torch.Generator, pos: int, step: int, running: float) -> dict[str, Any]:
    """Everything cell ``pos`` of the stack needs to continue after ``step`` completed steps."""
    full = opt.state_dict()
    optim: dict[str, dict[str, dict[str, Any]]] = {}
    for i, k in enumerate(trainable):  # per-cell slices of the stacked moments; shared scalars (step)
        entry: dict[str, dict[str, Any]] = {"cell": {}, "shared": {}}
        for name, v in full["state"].get(i, {}).items():
            if isinstance(v, torch.Tensor) and v.shape == stacked[k].shape:
                entry["cell"][name] = v[pos].clone()
            else:
                entry["shared"][name] = v.clone() if isinstance(v, torch.Tensor) else v
        optim[k] = entry
    return {"format": "stacked-cell/1", "step": step,
            "params": {k: v[pos].detach().clone() for k, v in stacked.items()},
            "optim": optim, "param_groups": full["param_groups"], "sched": sched.state_dict(),
            "generator": gen.get_state(), "running": running}


def train_stacked(cells: Sequence[StackedCell], method: str, cfg: TrainConfig, *,
                  mmcl: MMCLLossConfig | None = None, device: torch.device | str = "cpu",
                  progress: bool = True, desc: str = "", position: int | None = None,
                  states: Sequence[dict[str, Any]] | None = None,
                  save: Callable[[int, list[dict[str, Any]]], None] | None = None,
                  evaluate: Callable[[int], None] | None = None,
                  fused: bool = True) -> list[dict[str, float]]:
    """Train ``cells`` (all ``method``: "mmcl" or "sl") together; each model is updated in place.

    Every cell must pass :func:`unstackable_reason` and share the architecture. Returns per-cell
    throughput figures like :func:`mmclshift.train.images.train_loop` (``samples_per_s`` counts
    the cell's own samples over the stack's wall time).

    Checkpoints and learning curves:

    * ``save(step, states)`` is called every ``cfg.checkpoint_every`` completed steps (before the
      last) with one state per cell (in ``cells``' order): the cell's parameters, optimiser state,
      learning-rate schedule, its group's minibatch/augmentation generator and its running loss.
    * ``states`` (one per cell, all saved at the same step) resumes the stack there: training
      goes on exactly as it would have without the interruption (bitwise on CPU). Each group's
      minibatch stream is replayed from its seed to that step and its generator checked against
      the saved one.
    * ``evaluate(step)`` is called every ``cfg.eval_every`` completed steps and after the last,
      once every cell's module holds the parameters of that step.

    ``fused``: AdamW / Adam update all stacked tensors with torch's fused kernel (see
    :func:`stack_optimizer`).
    """
    if not cells:
        return []
    device = torch.device(device)
    mmcl = mmcl or MMCLLossConfig()
    st = _build_stack(cells, method, cfg, mmcl, device, fused)
    start = 0
    if states is not None:
        start, st.running = _restore(states, st.order, st.groups, st.stacked, st.trainable, st.opt, st.sched,
                                     st.gens, st.streams, cfg)
    objective = stacked_objective(method, mmcl)  # chosen once, not per step
    bar = tqdm(total=cfg.steps, initial=start, desc=desc or f"train {method} x{len(st.order)}", unit="step",
               disable=not progress, leave=False, dynamic_ncols=True, position=position)
    seen, t0 = 0, time.perf_counter()
    for step in range(start, cfg.steps):
        xs, y = _draw(st, cells, cfg, device)
        losses = objective(st.stacked, st.encoder(st.stacked, xs), y, mmcl)
        st.opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        st.opt.step()
        st.sched.step()
        if st.clamp is not None:
            with torch.no_grad():
                st.stacked["logit_scale"].clamp_(0, st.clamp)
        seen += y.shape[1]
        values = losses.detach()
        _check_finite(values, cells, st.order, method, step)
        st.running = values.clone() if st.running is None else 0.9 * st.running + 0.1 * values
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            _log_step(st, method, step, values, seen / max(time.perf_counter() - t0, 1e-9))
        if progress:
            bar.update(1)
        done = step + 1
        if evaluate is not None and (done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0)):
            _copy_back(st)
            evaluate(done)
        if save is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save(done, _cell_states(st, len(cells), done))
    bar.close()
    elapsed = time.perf_counter() - t0
    _copy_back(st)
    final = st.running.tolist() if st.running is not None else [0.0] * len(st.order)
    stats: list[dict[str, float]] = [{} for _ in cells]
    for pos, i in enumerate(st.order):
        stats[i] = {"seconds": elapsed, "samples_per_s": seen / max(elapsed, 1e-9),
                    "final_loss": final[pos], "stacked_cells": float(len(st.order))}
    return stats


@dataclass
class _Stack:
    """A stack being trained: its cells' parameters stacked, the optimiser and the groups' streams."""

    groups: list[list[int]]
    order: list[int]  # stack position -> cell index (cells of a group are consecutive)
    parts: list[dict[str, torch.Tensor]]  # each cell's own tensors, in stack order
    stacked: dict[str, torch.Tensor]
    trainable: list[str]
    encoder: StackedSmallCNN
    opt: torch.optim.Optimizer
    sched: Any
    targets: list[torch.Tensor]  # (M, n, ...) per group
    gens: list[torch.Generator]
    streams: list[Any]
    logs: list[Logger | None]
    clamp: float | None
    dtype: torch.dtype
    running: torch.Tensor | None = None


def _build_stack(cells: Sequence[StackedCell], method: str, cfg: TrainConfig, mmcl: MMCLLossConfig,
                 device: torch.device, fused: bool) -> _Stack:
    """Check that ``cells`` stack, and stack their parameters, optimiser and minibatch streams."""
    for cell in cells:
        reason = unstackable_reason(cell.model, method, mmcl)
        if reason is not None:
            raise ValueError(f"cannot stack this cell: {reason}")
    if len({min(cfg.batch_size, c.images.shape[0]) for c in cells}) > 1:
        raise ValueError("cannot stack cells whose minibatches differ in size (fewer images than the batch size)")
    groups = _groups(cells)
    order = [i for g in groups for i in g]
    models = [cells[i].model for i in order]
    parts = [_parts(m, method) for m in models]
    stacked = {k: torch.stack([pt[k].detach() for pt in parts]).to(device).contiguous() for k in parts[0]}
    trainable = [k for k, v in parts[0].items() if isinstance(v, nn.Parameter) and v.requires_grad]
    for k in trainable:
        stacked[k].requires_grad_(True)
    opt = stack_optimizer([stacked[k] for k in trainable], cfg, fused=fused)
    gens = [torch.Generator().manual_seed(cells[g[0]].stream_seed) for g in groups]
    return _Stack(
        groups=groups, order=order, parts=parts, stacked=stacked, trainable=trainable,
        encoder=StackedSmallCNN([len(g) for g in groups], _cnn(models[0])[1]),  # type: ignore[index]
        opt=opt, sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg)),
        targets=[torch.stack([cells[i].targets for i in g]) for g in groups],
        gens=gens,
        streams=[batches(cells[g[0]].images.shape[0], cfg, gen) for g, gen in zip(groups, gens, strict=True)],
        logs=[cells[i].log for i in order],
        clamp=math.log(mmcl.max_logit_scale) if method == "mmcl" and "logit_scale" in trainable else None,
        dtype=stacked["conv1.w"].dtype,  # float32 normally (float64 models train in float64)
    )


def _draw(st: _Stack, cells: Sequence[StackedCell], cfg: TrainConfig,
          device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One step's input batch per group (moved, scaled, translated) and the cells' targets (C, B, ...)."""
    xs, ys = [], []
    for g, gen, stream, tg in zip(st.groups, st.gens, st.streams, st.targets, strict=True):
        idx = next(stream)
        x = cells[g[0]].images[idx].to(device, non_blocking=True).float().div_(255.0)
        if cfg.augment:
            x = random_translate(x, cfg.max_shift, gen)
        xs.append(x.to(st.dtype))
        ys.append(tg[:, idx])
    return xs, (torch.cat(ys) if len(ys) > 1 else ys[0]).to(device, non_blocking=True)


def _check_finite(values: torch.Tensor, cells: Sequence[StackedCell], order: list[int], method: str,
                  step: int) -> None:
    """Stop with :class:`~mmclshift.train.optim.NonFiniteLoss` at the first cell whose loss diverged."""
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        pos = int(bad[0])
        name = cells[order[pos]].name or f"cell {order[pos]}"
        check_finite_loss(float(values[pos]), f"{method} {name}", step)


def _log_step(st: _Stack, method: str, step: int, values: torch.Tensor, rate: float) -> None:
    """Each cell's ``train`` record (loss, throughput, learning rate) for ``step``."""
    if all(log is None for log in st.logs):
        return
    lr = st.sched.get_last_lr()[0]
    for log, value in zip(st.logs, values.tolist(), strict=True):
        if log is not None:
            log({"event": "train", "method": method, "step": step, "loss": value, "samples_per_s": rate, "lr": lr})


def _copy_back(st: _Stack) -> None:
    """Copy each cell's slice of the stacked parameters into its own module."""
    with torch.no_grad():
        for c, pt in enumerate(st.parts):
            for k, tensor in pt.items():
                tensor.copy_(st.stacked[k][c].to(tensor.device))


def _cell_states(st: _Stack, n_cells: int, done: int) -> list[dict[str, Any]]:
    """One checkpoint state per cell (in the caller's order) after ``done`` steps."""
    ema = st.running.tolist() if st.running is not None else [0.0] * len(st.order)
    pos_of = {i: pos for pos, i in enumerate(st.order)}
    group_of = {i: gi for gi, g in enumerate(st.groups) for i in g}
    return [_cell_state(st.stacked, st.trainable, st.opt, st.sched, st.gens[group_of[i]], pos_of[i], done,
                        ema[pos_of[i]]) for i in range(n_cells)]


def _restore(states: Sequence[dict[str, Any]], order: list[int], groups: list[list[int]],
             stacked: dict[str, torch.Tensor], trainable: list[str], opt: torch.optim.Optimizer,
             sched: Any, gens: list[torch.Generator], streams: list[Any],
             cfg: TrainConfig) -> tuple[int, torch.Tensor]:
    """Load per-cell ``states`` (see :func:`_cell_state`) into the stack; (step, running losses)."""
    steps = {int(st["step"]) for st in states}
    if len(steps) != 1:
        raise ValueError(f"cannot resume a stack from cells saved at different steps ({sorted(steps)})")
    step = steps.pop()
    if not 0 < step < cfg.steps:
        raise ValueError(f"cannot resume at step {step} of a {cfg.steps}-step training")
    ordered = [states[i] for i in order]
    with torch.no_grad():
        for k, tensor in stacked.items():
            saved = torch.stack([st["params"][k] for st in ordered]).to(tensor.device, tensor.dtype)
            if saved.shape != tensor.shape:
                raise ValueError(f"saved {k} has shape {tuple(saved.shape[1:])}, the model "
                                 f"{tuple(tensor.shape[1:])}")
            tensor.copy_(saved)
    state: dict[int, dict[str, Any]] = {}
    for i, k in enumerate(trainable):
        entry: dict[str, Any] = dict(ordered[0]["optim"][k]["shared"])
        for name in ordered[0]["optim"][k]["cell"]:
            entry[name] = torch.stack([st["optim"][k]["cell"][name] for st in ordered])
        if entry:
            state[i] = entry
    opt.load_state_dict({"state": state, "param_groups": ordered[0]["param_groups"]})
    sched.load_state_dict(ordered[0]["sched"])
    for g, gen, stream in zip(groups, gens, streams, strict=True):
        _advance(stream, gen, step, cfg)
        for i in g:
            if not torch.equal(gen.get_state(), states[i]["generator"]):
                raise ValueError("the saved minibatch generator does not match the stream replayed "
                                 "from the cell's seed (another data order or seed)")
    running = torch.tensor([float(st["running"]) for st in ordered], dtype=stacked["conv1.w"].dtype,
                           device=stacked["conv1.w"].device)
    return step, running


__all__ = ["STACKED_LOSSES", "StackedCell", "StackedSmallCNN", "stack_optimizer", "stacked_objective", "stacked_bag_of_words", "stacked_clip_loss",
           "stacked_linear_loss", "stacked_sl_loss", "train_stacked", "unstackable_reason"]
