"""The real-data experiment kind ``clip_real`` (Section 6, Figure 3).

One config trains each listed method (MMCL: CLIP / SigLIP / intra-class ablation; SL: CE /
SupCon) on the same image-caption data and scores each trained model zero-shot on every listed
class-folder test set. Results: one eval record per (method, test set) in metrics.jsonl (the
schema of :mod:`mmclshift.runs`) and one JSON file per (method, test set) in ``<run>/results/``.

``--smoke`` (see :func:`smoke_config`) builds the package's fixtures from scikit-image photos
under ``<run>/fixtures`` and applies the config's ``smoke`` overrides, in which the string
``{fixtures}`` stands for that folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from mmclshift.config import (
    ConfigError,
    from_dict,
    nonnegative,
    param,
    path_part,
    positive,
    to_dict,
)
from mmclshift.errors import UserError
from mmclshift.runs import RunDir, atomic_write_text, identity_hash, seed_everything
from mmclshift.threads import TIER_THREADS, check_threads, torch_threads
from mmclshift.train.clip_settings import TrainSettings

KIND = "clip_real"
DEFAULT = TrainSettings  # the defaults of the train keys and of data.workers/prefetch


@dataclass
class DataConfig:
    format: Literal["csv", "coco", "wds"] = param("coco", help="csv/tsv file, COCO captions JSON "
                                                  "or webdataset shards")
    path: str = param("", help="CSV file, captions_train2017.json, or a shard pattern "
                      "(brace expansion; '::' joins patterns)")
    image_root: str | None = param(None, help="folder image paths are relative to (CSV: the "
                                   "CSV's folder; COCO: ../../train2017 of the JSON)")
    image_key: str = param("filepath", help="CSV image-path column")
    caption_key: str = param("title", help="CSV caption column")
    sep: str | None = param(None, help="CSV separator (default: detected from the header)")
    caption_mode: Literal["sample", "first", "all"] = param(
        "sample", help="per image: draw one caption per epoch, take the first, or use all")
    caption_transforms: list[dict[str, Any]] = param(
        default_factory=list, help="caption-richness transforms, e.g. [{kind: truncate, n: 5}]; "
        "kinds: class_only, drop_words, truncate, keep_captions")
    vocab: str = param("imagenet", help="class vocabulary for labels: imagenet, coco or a YAML")
    multi_class: Literal["first", "drop"] = param(
        "first", help="caption naming several classes: label with the first mentioned, or drop")
    no_class: Literal["drop", "keep"] = param(
        "drop", help="caption naming no class: drop it, or keep it with label -1")
    workers: int = param(DEFAULT.workers, help="DataLoader processes decoding images for "
                         "training and evaluation (0: in the main process; same batches either "
                         "way)", check=nonnegative)
    prefetch: int = param(DEFAULT.prefetch, help="chunks decoded ahead per worker",
                          check=positive)


@dataclass
class ModelConfig:
    name: str = param("RN50", help="OpenCLIP architecture (RN50, ViT-B-32, mmcl-tiny, ...)")
    image_size: int | None = param(None, help="override the architecture's image size")


@dataclass
class MethodConfig:
    name: str = param("clip", help="method name used in records and result files",
                      check=path_part)
    kind: Literal["mmcl", "sl"] = param("mmcl", help="mmcl (image + text towers) or sl (image tower"
                                        " + linear head)")
    loss: Literal["clip", "siglip", "clip_no_intra", "ce", "supcon"] = param(
        "clip", help="mmcl: clip, siglip, clip_no_intra (Fig. 3c ablation); sl: ce, supcon")

    def validate(self) -> None:
        ok = {"mmcl": ("clip", "siglip", "clip_no_intra"), "sl": ("ce", "supcon")}[self.kind]
        if self.loss not in ok:
            raise ConfigError(f"method {self.name!r}: loss {self.loss!r} is not a {self.kind} loss "
                              f"({', '.join(ok)})")


@dataclass
class TrainConfig:
    steps: int = param(1000, help="optimizer steps per method", check=positive)
    batch_size: int = param(256, help="global micro-batch (split over processes)", check=positive)
    accum_steps: int = param(DEFAULT.accum_steps, help="micro-batches accumulated per optimizer "
                             "step (features cached: the loss sees the accumulated batch)",
                             check=positive)
    lr: float = param(DEFAULT.lr, help="peak learning rate (AdamW)", check=positive)
    weight_decay: float = param(DEFAULT.weight_decay, help="AdamW weight decay", check=nonnegative)
    warmup_steps: int = param(DEFAULT.warmup_steps, help="linear warmup steps", check=nonnegative)
    grad_clip: float | None = param(DEFAULT.grad_clip, help="clip the gradient norm (None: off)")
    checkpoint_every: int = param(DEFAULT.checkpoint_every, help="checkpoint every N steps",
                                  check=positive)
    log_every: int = param(DEFAULT.log_every, help="log a train record every N steps",
                           check=positive)
    precision: Literal["fp32", "amp"] = param(DEFAULT.precision,
                                              help="amp: bfloat16 autocast on GPU")
    supcon_temperature: float = param(DEFAULT.supcon_temperature, help="SupCon temperature",
                                      check=positive)
    resume: str | None = param("latest", help="latest (this run's checkpoints), a path, or None")
    device: str = param("auto", help="auto, cpu or cuda")


@dataclass
class EvalSetConfig:
    name: str = param("id", help="split name in records ('id' for ImageNet val)",
                      check=path_part)
    root: str = param("", help="class-folder root of the test set")
    protocol: str = param("imagenet", help="imagenet, imagenet-v2, imagenet-sketch, imagenet-r, "
                          "imagenet-a, objectnet")
    subset: str | None = param(None, help="imagenet-r / imagenet-a (200 classes), objectnet "
                               "(ImageNet val on ObjectNet's 113 classes) or a wnid file")
    classes_file: str | None = param(None, help="override the class list (wnid<TAB>name lines)")
    mappings_dir: str | None = param(None, help="ObjectNet mappings/ folder (default root/mappings)")
    expected_size: int | None = param(None, help="override the known image count")
    objectnet_head: Literal["imagenet-max", "objectnet-names"] = param(
        "imagenet-max", help="ObjectNet head: max over its ImageNet classes (imagenet-testbed) "
        "or its own 113 names (CLIP_benchmark); also for subset objectnet")
    border: int | None = param(None, help="pixels cut from each image side (default: 2 for "
                               "objectnet, its frame; else 0)")


@dataclass
class EvalConfig:
    sets: list[EvalSetConfig] = param(default_factory=list, help="test sets")
    templates: str = param("openai", help="openai (80), simple (7) or a file of templates")
    batch_size: int = param(256, help="evaluation batch size", check=positive)


@dataclass
class RealExperimentConfig:
    kind: str = param(KIND, help="experiment kind")
    name: str = param("clip_real", help="experiment name", check=path_part)
    seed: int = param(0, help="seed of model init and data order")
    threads: int = param(TIER_THREADS["real"], help="torch CPU threads during the run (0: leave "
                         "torch's setting, i.e. all cores: the towers are large enough to use them)",
                         check=check_threads)
    data: DataConfig = param(default_factory=DataConfig)
    model: ModelConfig = param(default_factory=ModelConfig)
    methods: list[MethodConfig] = param(
        default_factory=lambda: [MethodConfig("clip", "mmcl", "clip"), MethodConfig("sl", "sl", "ce")],
        help="methods trained on the same data")
    train: TrainConfig = param(default_factory=TrainConfig)
    eval: EvalConfig = param(default_factory=EvalConfig)
    smoke: dict[str, Any] = param(default_factory=dict, help="dotted overrides applied by --smoke "
                                  "('{fixtures}' = the built fixture folder)")

    def validate(self) -> None:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ConfigError("config key 'methods': method names must be unique")


CONFIG_KINDS: dict[str, type] = {KIND: RealExperimentConfig}


# --------------------------------------------------------------------------- smoke


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def _fill(value: Any, fixtures: str) -> Any:
    if isinstance(value, str):
        return value.replace("{fixtures}", fixtures)
    if isinstance(value, list):
        return [_fill(v, fixtures) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, fixtures) for k, v in value.items()}
    return value


def smoke_config(cfg: RealExperimentConfig, out_dir: str | Path, *,
                 build: bool = True) -> RealExperimentConfig:
    """Apply ``cfg.smoke`` to a copy of ``cfg``, with ``{fixtures}`` = ``out_dir/fixtures``;
    ``build``: also write the fixtures there (idempotent)."""
    from mmclshift.data.fixtures import build_fixtures

    root = Path(out_dir) / "fixtures"
    if build:
        root = Path(build_fixtures(root)["root"])
    data = to_dict(cfg)
    for key, value in cfg.smoke.items():
        _set_dotted(data, key, _fill(value, str(root)))
    return from_dict(RealExperimentConfig, data)


# --------------------------------------------------------------------------- runner


def build_stream(cfg: RealExperimentConfig, preprocess: Any, vocab: Any, *, rank: int = 0,
                 world_size: int = 1, require_labels: bool = False):
    """The :class:`PairStream` of ``cfg.data`` (labels from ``vocab``)."""
    from mmclshift.data.captions import build_caption_transforms
    from mmclshift.data.image_text import PairStream, make_source

    d = cfg.data
    if not d.path:
        raise UserError("config key 'data.path' is empty (set it, or run with --smoke)")
    source = make_source(d.format, d.path, image_root=d.image_root, image_key=d.image_key,
                         caption_key=d.caption_key, sep=d.sep)
    caption_fn, keep = build_caption_transforms(d.caption_transforms, vocab)
    label_fn = vocab.labeller(d.multi_class, d.no_class)
    return PairStream(source, preprocess, seed=cfg.seed, caption_fn=caption_fn, label_fn=label_fn,
                      caption_mode=d.caption_mode, keep_captions=keep, rank=rank,
                      world_size=world_size)


def train_settings(cfg: RealExperimentConfig) -> TrainSettings:
    """The trainer's settings: every :class:`TrainSettings` field from ``cfg.train`` (``workers``
    and ``prefetch`` from ``cfg.data``)."""
    t, d = cfg.train, cfg.data
    return TrainSettings(**{f.name: getattr(t if hasattr(t, f.name) else d, f.name)
                            for f in fields(TrainSettings)})


def build_method(cfg: RealExperimentConfig, method: MethodConfig, n_classes: int):
    """(model, eval preprocessing, tokenizer or None) of a method, seeded by ``cfg.seed``."""
    from mmclshift.evaluate.openclip_log import quiet_open_clip
    from mmclshift.models.clip_models import create_clip, create_sl

    seed_everything(cfg.seed)
    with quiet_open_clip():
        if method.kind == "mmcl":
            return create_clip(cfg.model.name, siglip=method.loss == "siglip",
                               image_size=cfg.model.image_size)
        model, preprocess = create_sl(cfg.model.name, n_classes, image_size=cfg.model.image_size)
    return model, preprocess, None


def run_experiment(cfg: RealExperimentConfig, out_dir: str, *, progress: bool = True,
                   stop_after: int | None = None) -> list[dict[str, Any]]:
    """Train every method of ``cfg`` and evaluate it on every test set; return the eval records."""
    from mmclshift.data.captions import load_vocab
    from mmclshift.evaluate.zeroshot import (
        Scorer,
        TextHeadCache,
        evaluate,
        load_templates,
        resolve_eval_set,
    )
    from mmclshift.train.clip import init_distributed, train

    # every input is checked before the run directory is touched and before the first step
    for key, name in [*((f"methods[{i}].name", m.name) for i, m in enumerate(cfg.methods)),
                      *((f"eval.sets[{i}].name", e.name) for i, e in enumerate(cfg.eval.sets))]:
        if path_part(name):  # also for configs built without from_dict
            raise ConfigError(f"config key '{key}': {path_part(name)}; got {name!r}")
    vocab = load_vocab(cfg.data.vocab)
    settings = train_settings(cfg)
    eval_sets = [resolve_eval_set(s.name, s.root, s.protocol, subset=s.subset,
                                  classes_file=s.classes_file, mappings_dir=s.mappings_dir,
                                  expected_size=s.expected_size, objectnet_head=s.objectnet_head,
                                  border=s.border) for s in cfg.eval.sets]
    if eval_sets and any(m.kind == "mmcl" for m in cfg.methods):
        load_templates(cfg.eval.templates)
    dist_info = init_distributed(cfg.train.device)
    run = RunDir.create(out_dir, cfg, seed=cfg.seed, device=str(dist_info.device),
                        resume=cfg.train.resume is not None) \
        if dist_info.is_main else RunDir(out_dir)
    if dist_info.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()
    records: list[dict[str, Any]] = []
    cache = TextHeadCache()
    identity = identity_hash(cfg)
    with run.guard(), torch_threads(cfg.threads):
        for method in cfg.methods:
            model, preprocess, tokenizer = build_method(cfg, method, len(vocab))
            stream = build_stream(cfg, preprocess, vocab, rank=dist_info.rank,
                                  world_size=dist_info.world_size)
            result = train(model, method.kind, method.loss, stream, tokenizer, settings, run,
                           method.name, dist_info=dist_info, resume=cfg.train.resume,
                           progress=progress, stop_after=stop_after, identity=identity)
            if result.step < cfg.train.steps:
                return records  # stopped early (simulated kill): no evaluation
            if not dist_info.is_main:
                continue
            scorer = Scorer("clip" if method.kind == "mmcl" else "sl", model,
                            f"{method.name}@{result.step}", tokenizer=tokenizer, vocab=vocab,
                            templates=cfg.eval.templates, cache=cache)
            for ev in eval_sets:
                rec = evaluate(scorer, ev, preprocess, device=dist_info.device,
                               batch_size=cfg.eval.batch_size, progress=progress,
                               workers=cfg.data.workers, prefetch=cfg.data.prefetch)
                rec = {"event": "eval", "method": method.name, **{k: v for k, v in rec.items()
                                                                   if k != "event"},
                       "step": result.step, "loss": method.loss, "model": cfg.model.name,
                       "train_skipped": result.skips}
                run.log_metrics(rec)
                atomic_write_text(run.path / "results" / f"{method.name}__{ev.name}.json",
                                  json.dumps(rec, indent=2) + "\n")
                records.append(rec)
        if dist_info.is_main:
            run.mark_done({"records": len(records)})
    return records


def config_from_dict(data: dict[str, Any]) -> RealExperimentConfig:
    return from_dict(RealExperimentConfig, data)

