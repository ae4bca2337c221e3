"""Training loop of the real-data tier (Section 6, Figure 3): MMCL (CLIP / SigLIP / the
intra-class-contrasting ablation) and SL (cross-entropy / SupCon) on image-caption data.

One loop serves every method:

* **Distributed:** under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process group
  is initialised (nccl on GPU, gloo on CPU), the model is wrapped in DDP and the contrastive losses
  use all ranks' features, gathered with gradients (``open_clip``'s ``gather_features``), so the
  loss is the global batch's loss. Rank r reads the stream positions p with p % world == r.
* **Batches:** ``batch_size`` is the global micro-batch (split over ranks); ``accum_steps``
  micro-batches make one optimizer step's batch, with OpenCLIP's ``accum_freq`` semantics: their
  features are cached, so the negatives of a contrastive loss span the whole accumulated batch and
  the step's gradient is the one of that batch (:func:`accumulate_gradients`).
* **Mixed precision** (``precision: amp``) on GPU with bfloat16 autocast.
* **Checkpoints** every ``checkpoint_every`` steps, written atomically (``<run>/checkpoints/
  <method>/last.pt``) with model, optimizer, step, epoch, stream position and skip counts;
  ``resume: latest`` continues from it and ends with the same weights as an uninterrupted run on
  CPU (tested).
* **Logs:** ``train`` records in metrics.jsonl, tensorboard scalars in ``<run>/tb/<method>``
  (without the ``tensorboard`` package: one warning, no scalars), and a tqdm bar with samples/s.

:func:`train` strings together :func:`resume_training`, :func:`optimizer_step` (over
:func:`accumulate_gradients`) and :func:`save_training`, fed by this rank's batches in stream order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmclshift import losses
from mmclshift.data.image_text import PairStream
from mmclshift.data.loader import Batch, WorkerPool, batch_pool, iter_batches
from mmclshift.errors import UserError
from mmclshift.runs import RunDir, load_checkpoint, save_checkpoint
from mmclshift.train import optim
from mmclshift.train.clip_settings import TrainSettings  # defined apart (no torch); used from here

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment (or SLURM's) and initialise the process group if world > 1."""
    import torch.distributed as dist

    env = os.environ
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1")) or 1)
    rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")) or 0)
    local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")) or 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise UserError(f"config key 'train.device': {device} requested but CUDA is not available")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


# --------------------------------------------------------------------------- settings


def openclip_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """OpenCLIP's AdamW (betas 0.9/0.98, eps 1e-6; no weight decay on gains, biases and the
    temperature), with PyTorch's fused kernel where the parameters' device has one.

    The fused kernel updates each parameter in one pass instead of one pass per operation; for
    ``mmcl-tiny`` on CPU (1.6 M parameters, 1.58 M of them the token embedding) a step takes
    1.4 ms against 8.2 ms (one thread), and the weights agree to 3e-8 after 23 steps. Its state
    dict is the plain AdamW's, so checkpoints of either resume with either.
    """
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit" not in n)]
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    try:
        return optim.make_optimizer(groups, "adamw", settings.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return optim.make_optimizer(groups, "adamw", settings.lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup then cosine decay to 0 (OpenCLIP's default schedule)."""
    return s.lr * optim.warmup_cosine(step, s.steps, s.warmup_steps)


# --------------------------------------------------------------------------- the step


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


Tensors = dict[str, torch.Tensor]


def forward_outputs(model: nn.Module, kind: str, loss_name: str, images: torch.Tensor,
                    texts: torch.Tensor | None) -> tuple[Tensors, Tensors]:
    """One micro-batch's forward: ``(per_sample, shared)`` outputs.

    ``per_sample`` holds the tensors with one row per sample (features, logits), which the loss
    of an accumulated batch concatenates over micro-batches; ``shared`` the model-wide scalars
    (``logit_scale``, ``logit_bias``). Every parameter the loss reaches is reached through one of
    them, which is what makes :func:`accumulate_gradients` exact.
    """
    if kind == "mmcl":
        out = model(images, texts)
        per = {"image_features": out["image_features"], "text_features": out["text_features"]}
        shared = {k: out[k] for k in ("logit_scale", "logit_bias") if out.get(k) is not None}
        return per, shared
    feats, logits = model(images)
    per = {"features": feats, "logits": logits}
    if loss_name == "supcon":
        # SupCon trains the tower; the linear head is fitted alongside on detached features
        per["head_logits"] = _unwrap(model).head(feats.detach())
    return per, {}


RealLoss = Callable[[Tensors, Tensors, torch.Tensor, DistInfo, TrainSettings], torch.Tensor]


def _mmcl_inputs(per: Tensors, shared: Tensors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return per["image_features"], per["text_features"], shared["logit_scale"]


def _clip(per: Tensors, shared: Tensors, labels: torch.Tensor, d: DistInfo, s: TrainSettings) -> torch.Tensor:
    img, txt, scale = _mmcl_inputs(per, shared)
    return losses.clip_loss_distributed(img, txt, scale, normalize=False, rank=d.rank, world_size=d.world_size)


def _clip_no_intra(per: Tensors, shared: Tensors, labels: torch.Tensor, d: DistInfo,
                   s: TrainSettings) -> torch.Tensor:
    img, txt, scale = _mmcl_inputs(per, shared)
    return losses.intra_class_ablation_loss(img, txt, scale, labels, normalize=False, rank=d.rank,
                                            world_size=d.world_size)


def _siglip(per: Tensors, shared: Tensors, labels: torch.Tensor, d: DistInfo, s: TrainSettings) -> torch.Tensor:
    img, txt, scale = _mmcl_inputs(per, shared)
    return losses.siglip_loss(img, txt, scale, shared["logit_bias"], normalize=False, rank=d.rank,
                              world_size=d.world_size)


def _ce(per: Tensors, shared: Tensors, labels: torch.Tensor, d: DistInfo, s: TrainSettings) -> torch.Tensor:
    logits = per["logits"]
    if bool((labels < 0).all()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-1)


def _supcon(per: Tensors, shared: Tensors, labels: torch.Tensor, d: DistInfo, s: TrainSettings) -> torch.Tensor:
    feats, logits = per["features"], per["logits"]
    ce = F.cross_entropy(per["head_logits"], labels, ignore_index=-1) \
        if bool((labels >= 0).any()) else logits.sum() * 0.0
    return losses.supcon_loss(feats, labels, s.supcon_temperature, rank=d.rank,
                              world_size=d.world_size) + ce + 0.0 * logits.sum()


#: The real-data tier's methods: (kind, loss name) -> the loss of a batch given its
#: :func:`forward_outputs` (MMCL kinds use both towers, SL the image one); over ranks, features
#: are gathered with gradients.
REAL_LOSSES: dict[tuple[str, str], RealLoss] = {
    ("mmcl", "clip"): _clip,
    ("mmcl", "siglip"): _siglip,
    ("mmcl", "clip_no_intra"): _clip_no_intra,
    ("sl", "ce"): _ce,
    ("sl", "supcon"): _supcon,
}


def real_loss(kind: str, loss_name: str) -> RealLoss:
    """The registered loss of a method (:data:`REAL_LOSSES`); an unknown one is a :class:`UserError`."""
    try:
        return REAL_LOSSES[(kind, loss_name)]
    except KeyError:
        names = [name for k, name in REAL_LOSSES if k == kind]
        raise UserError(f"unknown {kind.upper()} loss {loss_name!r} ({', '.join(names)})") from None


def loss_from_outputs(kind: str, loss_name: str, per: Tensors, shared: Tensors,
                      labels: torch.Tensor, dist_info: DistInfo,
                      settings: TrainSettings) -> torch.Tensor:
    """A method's loss of a batch given its :func:`forward_outputs` (:data:`REAL_LOSSES`)."""
    return real_loss(kind, loss_name)(per, shared, labels, dist_info, settings)


def compute_loss(model: nn.Module, kind: str, loss_name: str, images: torch.Tensor,
                 texts: torch.Tensor | None, labels: torch.Tensor, dist_info: DistInfo,
                 settings: TrainSettings) -> torch.Tensor:
    """The loss of one batch for a method (forward and loss)."""
    per, shared = forward_outputs(model, kind, loss_name, images, texts)
    return loss_from_outputs(kind, loss_name, per, shared, labels, dist_info, settings)


@dataclass
class MicroBatch:
    """One micro-batch's tensors on the training device (``texts`` None for SL)."""

    images: torch.Tensor
    texts: torch.Tensor | None
    labels: torch.Tensor

    @classmethod
    def from_batch(cls, batch: Batch, device: torch.device) -> MicroBatch:
        labels = torch.tensor(batch.labels, dtype=torch.long).to(device, non_blocking=True)
        return cls(batch.images(device), batch.texts(device), labels)


def accumulate_gradients(model: nn.Module, kind: str, loss_name: str,
                         micro: Sequence[MicroBatch], dist_info: DistInfo,
                         settings: TrainSettings, *, amp: bool = False) -> float:
    """Backpropagate the loss of the batch made of all ``micro``-batches; return its value.

    One micro-batch: forward, loss, backward. Several (OpenCLIP's ``accum_freq``): the
    per-sample outputs of every micro-batch are first computed without gradients and cached;
    then each micro-batch is forwarded again with gradients and the loss is computed on the
    concatenation of its live outputs with the others' cached ones, so the negatives of a
    contrastive loss span the whole accumulated batch. Summed over the micro-batches these
    backward passes give the gradient of the accumulated batch's loss, as one forward of the
    whole batch would (tested). Unlike OpenCLIP, the shared temperature and bias take their
    gradient in the last pass only (OpenCLIP adds it in every pass, so k times). Under DDP only
    the last pass synchronises gradients.
    """
    d = dist_info

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp)

    if len(micro) == 1:
        with autocast():
            loss = compute_loss(model, kind, loss_name, micro[0].images, micro[0].texts,
                                micro[0].labels, d, settings)
        loss.backward()
        return float(loss.detach())
    with torch.no_grad(), autocast():
        cached = [forward_outputs(model, kind, loss_name, mb.images, mb.texts)[0] for mb in micro]
    labels = torch.cat([mb.labels for mb in micro])
    value = 0.0
    for j, mb in enumerate(micro):
        last = j == len(micro) - 1
        with contextlib.nullcontext() if last or d.world_size == 1 else model.no_sync():
            with autocast():
                per, shared = forward_outputs(model, kind, loss_name, mb.images, mb.texts)
                if not last:
                    shared = {k: v.detach() for k, v in shared.items()}
                joined = {k: torch.cat([c[k] for c in cached[:j]] + [v]
                                       + [c[k] for c in cached[j + 1:]]) for k, v in per.items()}
                loss = loss_from_outputs(kind, loss_name, joined, shared, labels, d, settings)
            loss.backward()
        value = float(loss.detach())
    return value


def optimizer_step(model: nn.Module, ddp_model: nn.Module, opt: torch.optim.Optimizer, kind: str,
                   loss_name: str, micro: Sequence[MicroBatch], step: int,
                   settings: TrainSettings, dist_info: DistInfo, *, amp: bool = False) -> float:
    """One optimizer step (0-based ``step``) on the batch made of ``micro``: learning rate,
    accumulated gradients, clipping, AdamW, the temperature clamp; returns the batch's loss."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, settings)
    opt.zero_grad(set_to_none=True)
    loss = accumulate_gradients(ddp_model, kind, loss_name, micro, dist_info, settings, amp=amp)
    if settings.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    opt.step()
    if hasattr(model, "logit_scale"):
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return loss


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: nn.Module
    step: int
    skips: dict[str, int]
    samples_per_s: float
    losses: list[float]


@functools.cache
def tensorboard_writer_class() -> type | None:
    """TensorBoard's ``SummaryWriter``, or None (with one warning per process) when the
    ``tensorboard`` package is not installed; any other failure propagates."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning("tensorboard is unavailable (%s): training goes on without tensorboard logs",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    return SummaryWriter


@dataclass
class Position:
    """Where a method's training stands: optimizer steps done, epoch and this rank's stream
    position within it."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0


def _all_cursors(cursor: int, d: DistInfo) -> list[int]:
    """Every rank's stream position (each rank resumes from its own)."""
    if d.world_size == 1:
        return [cursor]
    import torch.distributed as dist

    out = [torch.zeros(1, dtype=torch.long, device=d.device) for _ in range(d.world_size)]
    dist.all_gather(out, torch.tensor([cursor], dtype=torch.long, device=d.device))
    return [int(t.item()) for t in out]


def _check_resume(state: dict, path: Path, method: str, identity: str | None) -> None:
    """A checkpoint resumes only the run (config identity) and method that wrote it."""
    missing = [k for k in ("model", "optimizer", "step", "epoch", "cursors") if k not in state]
    if missing:
        raise UserError(f"resume: {path} is not a training checkpoint (no {', '.join(missing)})")
    if state.get("method") not in (None, method):
        raise UserError(f"resume: {path} holds method {state['method']!r}, not {method!r}")
    stored = state.get("identity")
    if identity is not None and stored is not None and stored != identity:
        raise UserError(f"resume: {path} was written by another config (identity {stored}, this "
                        f"run {identity}); set train.resume=null to start afresh, or use --force")


def checkpoint_path(run: RunDir, method: str) -> Path:
    """A method's checkpoint in ``run``: ``<run>/checkpoints/<method>/last.pt``."""
    return run.checkpoint_dir / method / "last.pt"


def resume_training(run: RunDir, method: str, resume: str | None, model: nn.Module,
                    opt: torch.optim.Optimizer, stream: PairStream, d: DistInfo,
                    identity: str | None) -> Position:
    """Restore model, optimizer and skip counts from the checkpoint ``resume`` names (None,
    ``"latest"``: this method's in ``run`` if any, or a path) and return where to go on from;
    without one, the start."""
    path = None
    if resume == "latest":
        path = checkpoint_path(run, method) if checkpoint_path(run, method).is_file() else None
    elif resume:
        path = Path(resume)
        if not path.is_file():
            raise UserError(f"resume: checkpoint {resume} not found")
    if path is None:
        return Position()
    state = load_checkpoint(path, map_location=d.device)
    _check_resume(state, path, method, identity)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else repr(exc)
        raise UserError(f"resume: checkpoint {path} does not fit this model ({first})") from None
    cursors = [int(c) for c in state["cursors"]]
    if len(cursors) != d.world_size:
        raise UserError(f"resume: checkpoint {path} was written by {len(cursors)} processes, "
                        f"this run has {d.world_size}")
    stream.skips.load(state.get("skips", {}))
    pos = Position(int(state["step"]), int(state["epoch"]), cursors[d.rank])
    if d.is_main:
        run.log_metrics({"event": "resume", "method": method, "step": pos.step})
        log.info("resumed %s from %s at step %d", method, path, pos.step)
    return pos


def save_training(run: RunDir, method: str, model: nn.Module, opt: torch.optim.Optimizer,
                  pos: Position, stream: PairStream, d: DistInfo, identity: str | None) -> None:
    """Write the method's checkpoint atomically (model, optimizer, step, epoch, every rank's
    stream position, skip counts, method, config identity); all ranks take part."""
    cursors = _all_cursors(pos.cursor, d)
    if d.is_main:
        save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "step": pos.step, "epoch": pos.epoch, "cursors": cursors,
                         "skips": stream.skips.state(), "method": method, "identity": identity},
                        checkpoint_path(run, method))
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


class _BatchFeed:
    """This rank's batches in stream order from ``pos`` on, across epochs; ``pos.epoch`` and
    ``pos.cursor`` follow the batches handed out."""

    def __init__(self, stream: PairStream, per_rank: int, pos: Position, pool: WorkerPool,
                 method: str) -> None:
        self.stream, self.per_rank, self.pos, self.pool, self.method = \
            stream, per_rank, pos, pool, method
        self._it = iter_batches(stream, per_rank, pos.epoch, pos.cursor, pool=pool)

    def next(self) -> Batch:
        empty_epochs = 0
        while True:
            batch = next(self._it, None)
            if batch is not None:
                self.pos.cursor = batch.positions[-1] + 1
                return batch
            self.pos.epoch, self.pos.cursor = self.pos.epoch + 1, 0
            empty_epochs += 1
            if empty_epochs > 1:
                raise UserError(
                    f"{self.method}: the data yields fewer than {self.per_rank} usable samples per "
                    f"process (skipped: {self.stream.skips.as_dict()})")
            self._it.close()
            self._it = iter_batches(self.stream, self.per_rank, self.pos.epoch, 0, pool=self.pool)

    def close(self) -> None:
        self._it.close()


class _Reporter:
    """The main process's progress: ``train`` records every ``log_every`` steps (and at the
    last), tensorboard scalars with them, and a tqdm bar."""

    def __init__(self, run: RunDir, method: str, settings: TrainSettings, start: int,
                 d: DistInfo, progress: bool) -> None:
        self.run, self.method, self.settings, self.main = run, method, settings, d.is_main
        self.writer = None
        self.bar = None
        if not self.main:
            return
        summary_writer = tensorboard_writer_class()
        if summary_writer is not None:
            self.writer = summary_writer(str(run.path / "tb" / method))
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=settings.steps, initial=start, desc=f"train {method}",
                            unit="step")

    def update(self, pos: Position, loss: float, rate: float, stream: PairStream) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.1f}")
        s, step = self.settings, pos.step
        if self.main and (step % s.log_every == 0 or step == s.steps):
            self.run.log_metrics({"event": "train", "method": self.method, "step": step,
                                  "loss": loss, "lr": lr_at(step - 1, s), "epoch": pos.epoch,
                                  "samples_per_s": rate, "skipped": stream.skips.as_dict()})
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, step)
                self.writer.add_scalar("train/samples_per_s", rate, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _wrap(model: nn.Module, kind: str, settings: TrainSettings, d: DistInfo
          ) -> tuple[nn.Module, int]:
    """Check the batch against the processes, move the model to the device, wrap it in DDP
    when there are several; return the model to call and the per-process micro-batch."""
    if settings.batch_size % d.world_size:
        raise UserError(f"train.batch_size {settings.batch_size} is not divisible by the "
                        f"{d.world_size} processes")
    per_rank = settings.batch_size // d.world_size
    if kind == "mmcl" and per_rank * d.world_size * settings.accum_steps < 2:
        raise UserError("train.batch_size x train.accum_steps must be >= 2 for a contrastive "
                        "loss")
    model.to(d.device)
    if d.world_size == 1:
        return model, per_rank
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
        find_unused_parameters=kind == "sl"), per_rank


def train(model: nn.Module, kind: str, loss_name: str, stream: PairStream,
          tokenizer: Callable[[list[str]], torch.Tensor] | None, settings: TrainSettings,
          run: RunDir, method: str, *, dist_info: DistInfo | None = None,
          resume: str | None = None, progress: bool = True,
          stop_after: int | None = None, identity: str | None = None) -> TrainResult:
    """Train ``model`` for ``settings.steps`` optimizer steps; see the module docstring.

    ``resume`` is None, ``"latest"`` (this method's last checkpoint in ``run``, if any) or a
    checkpoint path. ``identity`` (the run config's :func:`~mmclshift.runs.identity_hash`) is
    stored in every checkpoint, and a checkpoint written under another identity is refused.
    ``stop_after`` ends the run after that many steps of *this call* (used to simulate a killed
    job).
    """
    real_loss(kind, loss_name)  # an unknown method fails before anything is built
    d = dist_info or DistInfo()
    ddp_model, per_rank = _wrap(model, kind, settings, d)
    opt = openclip_optimizer(model, settings)
    amp = settings.precision == "amp" and d.device.type == "cuda"
    pos = resume_training(run, method, resume, model, opt, stream, d, identity)
    reporter = _Reporter(run, method, settings, pos.step, d, progress)
    # ``settings.workers`` processes decode (pinned on GPU), started once for all the epochs
    pool = batch_pool(stream, workers=settings.workers, prefetch=settings.prefetch,
                      pin_memory=d.device.type == "cuda",
                      tokenizer=tokenizer if kind == "mmcl" else None)
    losses_seen: list[float] = []
    t0, seen = time.perf_counter(), 0
    try:
        feed = _BatchFeed(stream, per_rank, pos, pool, method)
        ddp_model.train()
        while pos.step < settings.steps:
            micro = [MicroBatch.from_batch(feed.next(), d.device)
                     for _ in range(settings.accum_steps)]
            loss = optimizer_step(model, ddp_model, opt, kind, loss_name, micro, pos.step,
                                  settings, d, amp=amp)
            optim.check_finite_loss(loss, method, pos.step)
            pos.step += 1
            seen += sum(len(mb.labels) for mb in micro) * d.world_size
            losses_seen.append(loss)
            reporter.update(pos, loss, seen / max(time.perf_counter() - t0, 1e-9), stream)
            if pos.step % settings.checkpoint_every == 0 or pos.step == settings.steps:
                save_training(run, method, model, opt, pos, stream, d, identity)
            if stop_after is not None and len(losses_seen) >= stop_after:
                break
        feed.close()
    finally:
        pool.close()  # stops the loader's workers
        reporter.close()
    return TrainResult(model, pos.step, stream.skips.as_dict(),
                       seen / max(time.perf_counter() - t0, 1e-9), losses_seen)
