"""The theory tier: synthetic data models, linear MMCL vs SL, trained and predicted.

Config kinds ``data_model_1`` (Definition 4.1) and ``data_model_2`` (Definition 4.6). A run draws
a training set, trains linear MMCL (zero-shot by prompts) and the linear SL classifier on the same
images, evaluates both on the ID test set and the shifted ones, and records for every
(method, split): the test accuracy and its counts, the theory's prediction, and the trained
model's exact population accuracy (so the Monte-Carlo error of the test set and the estimation
error of training can be told apart).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmclshift.config import ConfigError, at_least, param, path_part, positive
from mmclshift.data.synthetic import (
    SPLITS,
    DataModel1Config,
    DataModel2Config,
    Sampler,
    SyntheticDataModel,
    build_data_model,
)
from mmclshift.evaluate.linear import (
    classifier_rule,
    population_accuracy,
    zero_shot_rule,
)
from mmclshift.evaluate.metrics import accuracy
from mmclshift.runs import RunDir
from mmclshift.theory.accuracy import batch_rule_accuracies
from mmclshift.theory.linear import (
    cross_covariance,
    image_noise_var,
    mmcl_bilinears,
    sl_population_rules,
)
from mmclshift.threads import TIER_THREADS, check_threads, torch_threads
from mmclshift.train.linear import MMCLConfig, OptimConfig, SLConfig, train_mmcl, train_sl

METHODS = ("mmcl", "sl")


@dataclass
class _SyntheticBase:
    kind: str = param("data_model_1", help="experiment kind")
    name: str = param("synthetic", help="a name for the run (used in default run-directory names)",
                      check=path_part)
    seed: int = param(0, help="master seed; data_seed and init_seed default to it")
    data_seed: int | None = param(None, help="seed of the training and test draws (default: seed)")
    init_seed: int | None = param(None, help="seed of model initialisation and minibatch order (default: seed)")
    device: str = param("cpu", help="cpu, cuda, cuda:N")
    dtype: Literal["float32", "float64"] = param("float32", help="tensor precision")
    n_train: int = param(20000, help="number of training pairs", check=at_least(2))
    n_test: int = param(20000, help="test-set size per split", check=positive)
    splits: list[str] = param(default_factory=lambda: list(SPLITS), help="test splits to evaluate")
    threads: int = param(TIER_THREADS["theory"], help="torch CPU threads during the run (0: leave "
                         "torch's setting); 1 is fastest for these small linear models",
                         check=check_threads)
    save_checkpoints: bool = param(True, help="save the trained models in checkpoints/")
    mmcl: MMCLConfig = field(default_factory=MMCLConfig)
    sl: SLConfig = field(default_factory=SLConfig)

    def validate(self) -> None:
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ConfigError(f"config key 'splits': unknown split {bad[0]!r} (known: {', '.join(SPLITS)})")
        if not self.splits:
            raise ConfigError("config key 'splits': needs at least one split")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"config key 'device': must be cpu or cuda[:N]; got {self.device!r}")
        if self.mmcl.loss == "infonce" and self.mmcl.normalize and self.mmcl.embed_dim < 2:
            raise ConfigError("config key 'mmcl.embed_dim': InfoNCE normalises the embeddings, so with "
                              f"embed_dim {self.mmcl.embed_dim} every embedding is +-1 and nothing is "
                              "learned; set mmcl.embed_dim=2 or more (or mmcl.normalize=false)")

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def effective_init_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed


@dataclass
class DataModel1Experiment(_SyntheticBase):
    kind: str = param("data_model_1", help="experiment kind")
    data: DataModel1Config = field(default_factory=DataModel1Config)


@dataclass
class DataModel2Experiment(_SyntheticBase):
    kind: str = param("data_model_2", help="experiment kind")
    data: DataModel2Config = field(default_factory=DataModel2Config)
    mmcl: MMCLConfig = field(default_factory=lambda: MMCLConfig(embed_dim=4))


CONFIG_KINDS: dict[str, type] = {
    "data_model_1": DataModel1Experiment,
    "data_model_2": DataModel2Experiment,
}

SyntheticExperiment = DataModel1Experiment | DataModel2Experiment


def data_model(cfg: SyntheticExperiment) -> SyntheticDataModel:
    return build_data_model(cfg.kind, cfg.data)


def _split_seed(seed: int, split: str) -> int:
    """Independent, stable seed per (data seed, split): adding a split never changes another."""
    digest = hashlib.sha256(f"{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def split_test_seed(cfg: SyntheticExperiment, split: str) -> int:
    """Seed of a test split: depends on the data seed, the split and the data model's parameters,
    so runs at different parameter points are scored on independent test sets."""
    from mmclshift.config import to_dict

    data = to_dict(cfg.data)
    for key, default in _LATER_KEYS.items():  # at their default, as if absent: older test sets stand
        if key in data and data[key] == default:
            del data[key]
    point = json.dumps(data, sort_keys=True)
    return _split_seed(cfg.effective_data_seed, f"{split}:{point}")


#: data keys added after test seeds were first derived from the data config, with the default that
#: leaves them out of it (so a config that does not use them keeps its test sets)
_LATER_KEYS: dict[str, object] = {"pi_shared": None}


def _dtype(cfg: SyntheticExperiment) -> torch.dtype:
    return torch.float64 if cfg.dtype == "float64" else torch.float32


# --------------------------------------------------------------------------- theory


def assumption_warnings(cfg: SyntheticExperiment) -> list[str]:
    """One-line warnings where a config leaves the paper's assumptions."""
    out = []
    bound = 1.0 / math.sqrt(math.log(cfg.n_train))
    if cfg.data.sigma_spu > bound:
        out.append(
            f"data.sigma_spu={cfg.data.sigma_spu:g} exceeds 1/sqrt(log n_train)={bound:.3g} "
            f"(n_train={cfg.n_train}): the paper's theorems assume sigma_spu = O(1/sqrt(log n))"
        )
    return out


def theory_records(cfgs: Sequence[SyntheticExperiment]) -> list[list[dict[str, Any]]]:
    """Theory records of many configs (one list per config, one record per (method, split)).

    Batched: SL rules of equal-shape binary models are solved together and each distinct training
    distribution once; every accuracy of every config is one batched orthant integral. A record is
    ``{"method", "split", "accuracy", "n": None, "source": "theory", "kind"}`` plus, for MMCL at a
    tie of singular values at the rank cut, ``"range": [min, max]`` over the tied minimisers and
    ``"warning"``; its ``accuracy`` is then null unless the range is narrower than
    :data:`TIE_RANGE_TOL`. MMCL predictions exist for the linear loss, SL ones for the gd solver.
    """
    models = [data_model(c) for c in cfgs]
    gd = [i for i, c in enumerate(cfgs) if c.sl.solver == "gd"]
    sl_rules: dict[int, Any] = {}
    by_wd: dict[float, list[int]] = {}
    for i in gd:
        by_wd.setdefault(cfgs[i].sl.weight_decay, []).append(i)
    for wd, idx in by_wd.items():
        for i, rule in zip(idx, sl_population_rules([models[i] for i in idx], wd), strict=True):
            sl_rules[i] = rule
    jobs: list[tuple] = []
    slots: list[tuple[int, str, str, int]] = []  # (config, method, split, number of jobs)
    cuts: dict[int, Any] = {}
    for i, (cfg, model) in enumerate(zip(cfgs, models, strict=True)):
        nv, P = image_noise_var(model), model.prompts()
        Ms = None
        if cfg.mmcl.loss == "linear":
            Ms, cuts[i] = mmcl_bilinears(cross_covariance(model), cfg.mmcl.embed_dim, cfg.mmcl.rho)
        for split in cfg.splits:
            mix = model.mixture(split)
            if Ms is not None:
                jobs.extend((mix, P @ M.T, None, nv) for M in Ms)
                slots.append((i, "mmcl", split, len(Ms)))
            else:
                slots.append((i, "mmcl", split, 0))
            if i in sl_rules:
                jobs.append((mix, sl_rules[i].A, sl_rules[i].b, nv))
                slots.append((i, "sl", split, 1))
            else:
                slots.append((i, "sl", split, 0))
    accs = batch_rule_accuracies(jobs)
    out: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    pos = 0
    for i, method, split, n in slots:
        rec: dict[str, Any] = {"method": method, "split": split, "accuracy": None, "n": None,
                               "source": "theory", "kind": cfgs[i].kind}
        vals = accs[pos : pos + n]
        pos += n
        if n == 1:
            rec["accuracy"] = vals[0]
        elif n > 1:
            lo, hi = min(vals), max(vals)
            rec["range"] = [lo, hi]
            rec["warning"] = cuts[i].warning()
            rec["accuracy"] = 0.5 * (lo + hi) if hi - lo <= TIE_RANGE_TOL else None
        out[i].append(rec)
    return out


#: a tied block whose minimisers' accuracies differ by less than this gives a prediction
TIE_RANGE_TOL = 1e-6


def theory_predictions(cfg: SyntheticExperiment) -> dict[tuple[str, str], float | None]:
    """{(method, split): predicted population accuracy (None where there is none)}."""
    return {(r["method"], r["split"]): r["accuracy"] for r in theory_records([cfg])[0]}


def predict_theory(cfg: SyntheticExperiment) -> list[dict[str, Any]]:
    """Theory records: one per (method, split), with ``n`` null (see :func:`theory_records`)."""
    return theory_records([cfg])[0]


def describe_cross_covariance(cfg: SyntheticExperiment) -> tuple[list[str], np.ndarray]:
    model = data_model(cfg)
    return model.feature_names, cross_covariance(model)


# --------------------------------------------------------------------------- training


@dataclass
class PreparedJob:
    """A job's data model, sampler, training draw and initialisation generator."""

    cfg: SyntheticExperiment
    model: SyntheticDataModel
    sampler: Sampler
    train: Any  # PairBatch
    init_gen: torch.Generator
    cache: dict = field(default_factory=dict, repr=False)  # shared draws (see prepare_job)

    def test_draw(self, split: str) -> Any:
        """The test set of ``split`` (drawn once per data settings and data seed)."""
        cfg = self.cfg
        key = (cfg.kind, repr(cfg.data), cfg.device, cfg.dtype, split, cfg.n_test, cfg.effective_data_seed)
        if key not in self.cache:
            gen = torch.Generator().manual_seed(split_test_seed(cfg, split))
            self.cache[key] = self.sampler.sample(split, cfg.n_test, gen)
        return self.cache[key]


def prepare_job(cfg: SyntheticExperiment, *, train_cache: dict | None = None) -> PreparedJob:
    """Build the sampler and draw the training set exactly as :func:`run_experiment` does.

    ``train_cache`` (optional) shares the sampler (its geometry) and the draws between jobs whose
    data settings and data seed agree; :func:`evaluate_job` shares the test draws through it too.
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {cfg.device} requested but CUDA is not available")
    cache = {} if train_cache is None else train_cache
    geometry = (cfg.kind, repr(cfg.data), cfg.device, cfg.dtype)
    if geometry not in cache:
        model = data_model(cfg)
        cache[geometry] = (model, Sampler(model, device=device, dtype=_dtype(cfg)))
    model, sampler = cache[geometry]
    data_seed = cfg.effective_data_seed
    key = (*geometry, "train", cfg.n_train, data_seed)
    if key not in cache:
        cache[key] = sampler.sample("train", cfg.n_train,
                                    torch.Generator().manual_seed(_split_seed(data_seed, "train")))
    return PreparedJob(cfg, model, sampler, cache[key],
                       torch.Generator().manual_seed(cfg.effective_init_seed), cache)


def evaluate_job(job: PreparedJob, run: RunDir, mmcl: Any, sl: Any,
                 preds: dict[tuple[str, str], float | None]) -> list[dict[str, Any]]:
    """Evaluate trained models on every split, log eval records, save checkpoints, mark done."""
    cfg, sampler = job.cfg, job.sampler
    if cfg.save_checkpoints:
        run.save_checkpoint({"state_dict": mmcl.state_dict()}, "mmcl.pt")
        run.save_checkpoint({"state_dict": sl.state_dict()}, "sl.pt")
    rules = {
        "mmcl": zero_shot_rule(mmcl, sampler.prompt_inputs(),
                               normalize_text=cfg.mmcl.loss == "infonce" and cfg.mmcl.normalize),
        "sl": classifier_rule(sl),
    }
    records = []
    for split in cfg.splits:
        test = job.test_draw(split)
        for method in METHODS:
            rule = rules[method]
            acc, correct, n = accuracy(rule.scores(test.x_image).argmax(dim=1), test.labels)
            rec = {
                "event": "eval", "method": method, "split": split, "accuracy": acc,
                "n": n, "correct": correct, "step": None,
                "theory": preds.get((method, split)),
                "population": population_accuracy(rule, sampler.mixture(split), sampler.D_image,
                                                  image_noise_var(job.model)),
            }
            run.log_metrics(rec)
            records.append(rec)
    run.mark_done({"records": len(records)})
    return records


def run_experiment(cfg: SyntheticExperiment, out_dir: str | Path, *, progress: bool = True,
                   theory: bool = True) -> list[dict[str, Any]]:
    """Train MMCL and SL on one draw of the data model; evaluate; write the run directory."""
    for line in assumption_warnings(cfg):
        warnings.warn(line, stacklevel=2)
    with torch_threads(cfg.threads):  # before create: env.json records the run's threads
        run = RunDir.create(out_dir, cfg, seed=cfg.seed, device=cfg.device)
        with run.guard():
            job = prepare_job(cfg)
            mmcl = train_mmcl(job.train.x_image, job.train.x_text, cfg.mmcl, job.init_gen,
                              progress=progress, log=run.log_metrics)
            sl = train_sl(job.train.x_image, job.train.labels, job.model.num_classes, cfg.sl,
                          job.init_gen, progress=progress, log=run.log_metrics)
            preds = theory_predictions(cfg) if theory else {}
            return evaluate_job(job, run, mmcl, sl, preds)


__all__ = ["CONFIG_KINDS", "DataModel1Experiment", "DataModel2Experiment", "OptimConfig",
           "PreparedJob", "evaluate_job", "predict_theory", "prepare_job", "run_experiment",
           "theory_predictions", "theory_records", "assumption_warnings"]
