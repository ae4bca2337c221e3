"""One run of the semi-synthetic tier: its config, its training and its evaluation.

A run builds the training images and captions (:mod:`mmclshift.data.semisynthetic`), trains each
of its methods (:data:`~mmclshift.train.images.IMAGE_METHODS`: MMCL with two towers and the CLIP
or the paper's linear loss, SL with the same image encoder and a linear head, the intra-class
ablation) with matched optimisation, and evaluates them on its test splits. The pieces the
stacked trainer shares (:func:`start_run`, :func:`new_model`, :func:`log_curve`,
:func:`finish_run`) live here; :mod:`mmclshift.experiments.semisynthetic` adds the Figure 2 grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmclshift.config import ConfigError, each, param, path_part, probability
from mmclshift.data.digits import load_digits
from mmclshift.data.semisynthetic import (
    MAX_CAPTION_LEN,
    NUM_CLASSES,
    SPLIT_KINDS,
    VOCAB,
    SemiSyntheticDataConfig,
    build_splits,
    zero_shot_prompts,
)
from mmclshift.evaluate.metrics import accuracy
from mmclshift.evaluate.semisynthetic import predict_classes, zero_shot_head
from mmclshift.models.towers import ModelConfig, SupervisedModel, TwoTowerModel
from mmclshift.runs import RunDir, seed_everything
from mmclshift.threads import TIER_THREADS, check_threads, torch_threads
from mmclshift.train.images import (
    IMAGE_METHODS,
    MMCLLossConfig,
    TrainConfig,
    clamp_logit_scale,
    train_loop,
)

#: the methods a run may train: MMCL (two towers, zero-shot), SL, and the intra-class ablation
#: of Figure 3c (MMCL with the CLIP loss, the in-batch negatives of the anchor's own digit removed:
#: ``losses.intra_class_ablation_loss`` on the digit labels -- at pi_core = 1 every caption names
#: its digit, so these are also the captions' classes)
METHODS = tuple(IMAGE_METHODS)
TWO_TOWER = tuple(m for m, spec in IMAGE_METHODS.items() if spec.contrastive)
FIGURE2_AXIS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the pi_core and pi_spu values of the demo's grid
TEST_SPLITS = tuple(s for s in SPLIT_KINDS if s != "train")


@dataclass
class GridConfig:
    """The Figure 2 grid: one MMCL run per (pi_core, pi_spu, seed); one SL run per seed."""

    pi_core: list[float] = param(default_factory=lambda: [0.0, 0.5, 1.0],
                                 help="caption probabilities of the digit", check=each(probability))
    pi_spu: list[float] = param(default_factory=lambda: [0.0, 0.5, 1.0],
                                help="caption probabilities of the colour", check=each(probability))
    seeds: list[int] = param(default_factory=lambda: [0], help="seeds (each cell is run per seed)")
    stacked: bool = param(True, help="train the grid's runs together as stacked models where they "
                          "stack (small_cnn + bow; see docs/semisynthetic.md); false: one at a time")


@dataclass
class SemiSyntheticExperiment:
    kind: str = param("semisynthetic", help="experiment kind")
    name: str = param("semisynthetic", help="a name for the run (used in default run-directory names)",
                      check=path_part)
    seed: int = param(0, help="seed of the data construction, initialisation and minibatch order")
    device: str = param("cpu", help="cpu, cuda, cuda:N")
    threads: int = param(TIER_THREADS["semisynthetic"], help="torch CPU threads during the run (0: "
                         "leave torch's setting); 1 is fastest for the small CNN, above all on shared cores",
                         check=check_threads)
    methods: list[str] = param(default_factory=lambda: ["mmcl", "sl"],
                               help="methods to train: mmcl, sl, mmcl_no_intra (the intra-class ablation)")
    splits: list[str] = param(default_factory=lambda: list(TEST_SPLITS), help="test splits")
    data: SemiSyntheticDataConfig = field(default_factory=SemiSyntheticDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mmcl: MMCLLossConfig = field(default_factory=MMCLLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    save_checkpoints: bool = param(True, help="save the trained models in checkpoints/")

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"config key 'methods': must be a non-empty list of {', '.join(METHODS)}; got {self.methods!r}")
        if "mmcl_no_intra" in self.methods and self.mmcl.loss != "clip":
            raise ConfigError("config key 'methods': mmcl_no_intra ablates the CLIP loss; it needs "
                              f"mmcl.loss: clip (got {self.mmcl.loss!r})")
        bad = [s for s in self.splits if s not in TEST_SPLITS]
        if bad:
            raise ConfigError(f"config key 'splits': unknown split {bad[0]!r} (known: {', '.join(TEST_SPLITS)})")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"config key 'device': must be cpu or cuda[:N]; got {self.device!r}")


CONFIG_KINDS: dict[str, type] = {"semisynthetic": SemiSyntheticExperiment}


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return None
    return SummaryWriter(log_dir=str(path / "tensorboard"))


def run_experiment(cfg: SemiSyntheticExperiment, out_dir: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Train the config's methods on one construction of the data; evaluate; write the run dir."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {cfg.device} requested but CUDA is not available")
    digits = load_digits(cfg.data.root)  # before the run dir: a bad root loses nothing
    run = RunDir.create(out_dir, cfg, seed=cfg.seed, device=str(device))
    writer = _tensorboard(run.path)
    try:
        with run.guard(), torch_threads(cfg.threads):
            records = _run(cfg, run, digits, device, progress, writer)
    finally:
        if writer is not None:
            writer.close()
    return records


def _run(cfg: SemiSyntheticExperiment, run: RunDir, digits: Any, device: torch.device,
         progress: bool, writer: Any) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    data = start_run(cfg, run, digits)
    train = data["train"]
    images = train.images.to(device) if device.type == "cuda" else train.images
    models: dict[str, Any] = {}
    throughput: dict[str, float] = {}
    for method in METHODS:
        if method not in cfg.methods:
            continue
        # the same init stream and the same minibatch/augmentation stream for both methods
        model = new_model(cfg, method, device)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        spec = IMAGE_METHODS[method]
        clamp = clamp_logit_scale(model, cfg.mmcl) if spec.contrastive else None
        stats = train_loop(model, spec.loss(model, cfg.mmcl), images, spec.targets(train), cfg.train,
                           gen, method=method, device=device, progress=progress,
                           log=run.log_metrics, writer=writer,
                           after_step=_after_step(cfg, run, data, method, model, device, clamp))
        throughput[method] = stats["samples_per_s"]
        models[method] = model
        save_model(cfg, run, method, model)
    return finish_run(cfg, run, digits, data, models, throughput, t0, device, writer)


def start_run(cfg: SemiSyntheticExperiment, run: RunDir, digits: Any, *, log: bool = True) -> dict[str, Any]:
    """Seed, build the run's splits and log its ``data`` record (the first part of a run; a run
    resumed from a checkpoint has logged it already: ``log=False``)."""
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    data = build_splits(digits, cfg.data, cfg.seed, cfg.splits)
    train = data["train"]
    if not log:
        return data
    run.log_metrics({
        "event": "data", **digits.describe(), "n_train_used": len(train),
        "spurious": cfg.data.spurious, "spurious_strength": cfg.data.spurious_strength,
        "train_colour_agreement": float((train.colours == train.labels).float().mean()),
        "train_names_core": float(train.names_core.float().mean()),
        "train_names_spu": float(train.names_spu.float().mean()),
        "build_seconds": time.perf_counter() - t0,
    })
    return data


def new_model(cfg: SemiSyntheticExperiment, method: str, device: torch.device) -> torch.nn.Module:
    """A method's untrained model, initialised from the run's seed (equal for MMCL and SL)."""
    torch.manual_seed(cfg.seed)
    if method in TWO_TOWER:
        return TwoTowerModel(cfg.model, len(VOCAB), MAX_CAPTION_LEN, init_temperature=cfg.mmcl.temperature,
                             learn_temperature=cfg.mmcl.learn_temperature).to(device)
    return SupervisedModel(cfg.model, NUM_CLASSES).to(device)


def save_model(cfg: SemiSyntheticExperiment, run: RunDir, method: str, model: torch.nn.Module) -> None:
    if cfg.save_checkpoints:
        run.save_checkpoint({"state_dict": model.state_dict(), "method": method}, f"{method}.pt")


def _classifier(method: str, model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(encoder, predict_classes keyword arguments) that classify digits: zero-shot for MMCL, the head for SL."""
    if method in TWO_TOWER:
        with torch.no_grad():
            head = zero_shot_head(model, zero_shot_prompts(), device)
        return model.image, {"head": head}
    return model, {}


def curve_subset(n: int, size: int) -> torch.Tensor:
    """The fixed test subset of the learning curves: ``size`` of ``n`` indices drawn with seed 0
    (sorted; all ``n`` when ``size`` is 0 or at least ``n``)."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:size].sort().values


def log_curve(cfg: SemiSyntheticExperiment, run: RunDir, data: dict[str, Any], method: str,
              model: torch.nn.Module, step: int, device: torch.device) -> None:
    """Log one learning-curve point: ``curve`` records (accuracy on each test split's fixed subset
    of ``train.eval_subset`` images, see :func:`curve_subset`) after ``step`` training steps."""
    encode, kwargs = _classifier(method, model, device)
    for split in cfg.splits:
        test = data[split]
        idx = curve_subset(len(test.labels), cfg.train.eval_subset)
        acc, correct, n = accuracy(predict_classes(encode, test.images[idx], device, **kwargs), test.labels[idx])
        run.log_metrics({"event": "curve", "method": method, "split": split, "step": step,
                         "accuracy": acc, "correct": correct, "n": n, "subset": cfg.train.eval_subset})
    model.train()


def _after_step(cfg: SemiSyntheticExperiment, run: RunDir, data: dict[str, Any], method: str,
                model: torch.nn.Module, device: torch.device,
                then: Callable[[], None] | None = None) -> Callable[[], None] | None:
    """``train_loop``'s per-step hook: ``then`` and, every ``train.eval_every`` steps and after the
    last, a learning-curve point (:func:`log_curve`)."""
    every = cfg.train.eval_every
    if not every:
        return then
    done = 0

    def hook() -> None:
        nonlocal done
        if then is not None:
            then()
        done += 1
        if done % every == 0 or done == cfg.train.steps:
            log_curve(cfg, run, data, method, model, done, device)

    return hook


def finish_run(cfg: SemiSyntheticExperiment, run: RunDir, digits: Any, data: dict[str, Any],
               models: dict[str, Any], throughput: dict[str, float], t0: float, device: torch.device,
               writer: Any, summary: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Evaluate trained models, log the eval records and mark the run done."""
    records = []
    for method, model in models.items():
        encode, kwargs = _classifier(method, model, device)
        for split in cfg.splits:
            test = data[split]
            acc, correct, n = accuracy(predict_classes(encode, test.images, device, **kwargs), test.labels)
            rec = {"event": "eval", "method": method, "split": split, "accuracy": acc, "n": n,
                   "correct": correct, "step": cfg.train.steps, "theory": None,
                   "pi_core": cfg.data.pi_core, "pi_spu": cfg.data.pi_spu,
                   "spurious_strength": cfg.data.spurious_strength, "seed": cfg.seed,
                   "data_source": digits.source}
            run.log_metrics(rec)
            if writer is not None:
                writer.add_scalar(f"{method}/accuracy_{split}", acc, cfg.train.steps)
            records.append(rec)
    run.mark_done({"records": len(records), "data_source": digits.source,
                   "samples_per_s": throughput, "seconds": time.perf_counter() - t0, **(summary or {})})
    return records


def demo_config() -> SemiSyntheticExperiment:
    """The smoke-scale Figure 2 grid on the embedded digits (= configs/fig2_smoke.yaml).

    5 x 5 cells over pi_core, pi_spu in {0, 0.25, 0.5, 0.75, 1}, seeds 0, 1, 2, 300 steps per model
    on 14x14 inputs, one CPU thread: the grid ``make demo`` runs for this tier.
    """
    return SemiSyntheticExperiment(
        name="fig2-smoke", splits=list(TEST_SPLITS), threads=1, save_checkpoints=False,
        data=SemiSyntheticDataConfig(spurious_strength=0.9, pi_core=1.0, pi_spu=1.0),
        model=ModelConfig(image_size=14, cnn_width=16, embed_dim=64),
        train=TrainConfig(steps=300, batch_size=128, lr=0.002),
        grid=GridConfig(pi_core=list(FIGURE2_AXIS), pi_spu=list(FIGURE2_AXIS), seeds=[0, 1, 2]),
    )


__all__ = ["CONFIG_KINDS", "FIGURE2_AXIS", "METHODS", "TEST_SPLITS", "TWO_TOWER", "GridConfig",
           "SemiSyntheticExperiment", "curve_subset", "demo_config", "finish_run", "log_curve", "new_model",
           "run_experiment", "save_model", "start_run"]
