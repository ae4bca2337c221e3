"""Zero-shot evaluation of existing checkpoints (``mmclshift eval``): a real-data run directory of
this tool, one of its checkpoint files, or an OpenCLIP checkpoint.

Targets:

* a ``clip_real`` run directory: every method of its config, from
  ``<run>/checkpoints/<method>/last.pt``, built and preprocessed as the run built them, scored on
  the run's own test sets (the same numbers its training recorded) or on other ones;
* a checkpoint file this tool wrote (``{"model", "method", "step", "identity", ...}``): its method
  of the run it lies in (``<run>/checkpoints/<method>/last.pt``), or of the experiment config
  given with it;
* an OpenCLIP checkpoint file with its architecture (``model``): a state dict, or OpenCLIP's
  training checkpoint (``{"state_dict": ...}``, ``module.`` prefixes), loaded as
  ``open_clip.create_model(model, pretrained=FILE)`` loads it, offline. Architectures whose
  tokenizer lives on the Hugging Face hub are refused; the built-in tokenizer ones (RN50,
  ViT-B-32, ...) work.

The evaluation writes a run directory of kind ``clip_real`` (config.yaml describing the target and
its files' SHA-256, metrics.jsonl with one ``eval`` record per (method, test set) as training
writes them, ``results/<method>__<split>.json``, ``done``) that ``collect``, ``robustness`` and
``report`` read beside trained runs, and CLIP_benchmark-style records
(``clip_benchmark/<method>__<split>.json``: ``dataset``, ``model``, ``pretrained``, ``task``:
``zeroshot_classification``, ``metrics``: ``acc1``, ``acc5``, ``mean_per_class_recall``).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mmclshift.config import ConfigError, from_dict, param, read_yaml
from mmclshift.errors import DataError, UserError
from mmclshift.evaluate.openclip_log import quiet_open_clip
from mmclshift.experiments.real import (
    KIND,
    EvalConfig,
    EvalSetConfig,
    MethodConfig,
    ModelConfig,
    RealExperimentConfig,
)
from mmclshift.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RunDir,
    atomic_write_text,
    check_run_dir,
    eval_records,
    load_checkpoint,
)

Source = Literal["run", "checkpoint", "openclip"]
#: CLIP_benchmark's dataset names of the full standard test sets (protocol -> name)
CLIP_BENCHMARK_NAMES = {"imagenet": "imagenet1k", "imagenet-v2": "imagenetv2",
                        "imagenet-sketch": "imagenet_sketch", "imagenet-r": "imagenet-r",
                        "imagenet-a": "imagenet-a", "objectnet": "objectnet"}
TASK = "zeroshot_classification"
#: our checkpoint's keys (mmclshift.train.clip writes them)
OUR_KEYS = ("model", "method", "step")


@dataclass
class EvalDataConfig:
    vocab: str | None = param(None, help="SL models: the training vocabulary (its run's data.vocab)")
    workers: int = param(2, help="DataLoader processes decoding test images")
    prefetch: int = param(2, help="chunks decoded ahead per worker")


@dataclass
class CheckpointEvalConfig:
    """What an evaluation run evaluated: written as its config.yaml (kind ``clip_real``, so it
    shares the real-data runs' effective-robustness lines)."""

    kind: str = param(KIND, help="experiment kind of the records")
    name: str = param("eval", help="name of the evaluation")
    seed: int = param(0, help="unused (no randomness); kept for collect")
    source: Source = param("openclip", help="run directory, mmclshift checkpoint, or OpenCLIP file")
    target: str = param("", help="the path evaluated")
    checkpoints: dict[str, str] = param(default_factory=dict, help="method -> checkpoint file")
    sha256: dict[str, str] = param(default_factory=dict, help="method -> SHA-256 of its file")
    pretrained: str = param("", help="the 'pretrained' field of the CLIP_benchmark records")
    model: ModelConfig = param(default_factory=ModelConfig)
    methods: list[MethodConfig] = param(default_factory=list)
    data: EvalDataConfig = param(default_factory=EvalDataConfig)
    eval: EvalConfig = param(default_factory=EvalConfig)
    device: str = param("auto", help="auto, cpu or cuda")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_torch_file(path: Path) -> bool:
    """A ``torch.save`` file: a zip archive, or a legacy pickle (protocol 2+ starts with 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file as a mapping, or a one-line :class:`DataError` naming it and why not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path}: not a safetensors checkpoint ({_first_line(exc)})") from None
    if not _is_torch_file(path):
        raise DataError(f"{path}: not a checkpoint (not a file written by torch.save)")
    return load_checkpoint(path)


def is_our_checkpoint(state: dict[str, Any]) -> bool:
    return all(k in state for k in OUR_KEYS) and isinstance(state.get("model"), dict)


def _run_config(run: Path) -> RealExperimentConfig:
    from mmclshift import experiments

    cfg_file = run / CONFIG_FILE
    if not cfg_file.is_file():
        raise UserError(f"{run}: not a run directory (no {CONFIG_FILE})")
    kind = read_yaml(cfg_file).get("kind")
    if kind != KIND:
        raise UserError(f"{run}: a run of kind {kind!r}; eval scores {KIND} runs and checkpoints")
    if "target" in read_yaml(cfg_file):
        raise UserError(f"{run}: an evaluation's run directory; evaluate the run or file it "
                        "evaluated instead")
    return experiments.load_config(cfg_file)


@dataclass
class Target:
    """A resolved target: the config to build methods with (ours) or the OpenCLIP file."""

    source: Source
    path: Path
    checkpoints: dict[str, Path]
    cfg: RealExperimentConfig | None  # ours: the run's config
    arch: str
    image_size: int | None


def resolve_target(target: str | Path, *, model: str | None = None, image_size: int | None = None,
                   config: str | Path | None = None) -> Target:
    """Classify ``target`` (run directory, our checkpoint, OpenCLIP file) and check its files."""
    path = Path(target)
    if path.is_dir():
        if model is not None:
            raise UserError(f"{path}: a run directory's architecture comes from its config; "
                            "drop --model")
        cfg = _run_config(path)
        ckpts = {m.name: path / CHECKPOINT_DIR / m.name / "last.pt" for m in cfg.methods}
        for ck in ckpts.values():  # read (and checked) when the models are built
            if not ck.is_file():
                raise DataError(f"{ck}: no such checkpoint file (has the run finished?)")
        return Target("run", path, ckpts, cfg, cfg.model.name, cfg.model.image_size)
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint file")
    state = read_checkpoint(path)
    if is_our_checkpoint(state):
        if model is not None:
            raise UserError(f"{path}: an mmclshift checkpoint; its architecture comes from its "
                            "run's config, drop --model")
        if config is not None:
            from mmclshift import experiments

            cfg = experiments.load_config(config)
            if getattr(cfg, "kind", None) != KIND:
                raise UserError(f"{config}: a config of kind {cfg.kind!r}, not {KIND}")
        elif path.parent.parent.name == CHECKPOINT_DIR:
            cfg = _run_config(path.parent.parent.parent)
        else:
            raise UserError(f"{path}: an mmclshift checkpoint outside its run directory; give the "
                            "experiment config it was trained with (--config)")
        method = str(state["method"])
        if method not in {m.name for m in cfg.methods}:
            raise UserError(f"{path}: method {method!r} is not in the config's methods "
                            f"({', '.join(m.name for m in cfg.methods)})")
        return Target("checkpoint", path, {method: path}, cfg, cfg.model.name,
                      cfg.model.image_size)
    if model is None:
        raise UserError(f"{path}: not an mmclshift checkpoint (no {', '.join(OUR_KEYS)} keys); "
                        "for an OpenCLIP checkpoint give its architecture with --model ARCH")
    return Target("openclip", path, {"clip": path}, None, model, image_size)


def _load_openclip(arch: str, path: Path, image_size: int | None, method: str
                   ) -> tuple[Any, Any, Any]:
    """(model, eval preprocess, tokenizer) with ``path``'s weights, as open_clip loads them."""
    import open_clip

    from mmclshift.models.clip_models import register_model_configs

    register_model_configs()
    if arch not in open_clip.list_models():
        raise UserError(f"--model {arch!r}: unknown OpenCLIP architecture (e.g. RN50, ViT-B-32)")
    try:
        with quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=str(path), force_image_size=image_size, output_dict=True)
    except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
        # open_clip's position-embedding resizing asserts on widths that differ
        why = _first_line(exc)
        hint = ("; trained at another image size? give --image-size"
                if "size mismatch" in why and "positional_embedding" in why else "")
        raise UserError(f"{path}: the weights do not fit OpenCLIP architecture {arch!r}"
                        + (f" at image size {image_size}" if image_size else "")
                        + f" ({why}){hint}") from None
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:  # noqa: BLE001 -- hub tokenizers fail in many ways offline
        raise UserError(f"--model {arch!r}: its tokenizer cannot be loaded offline "
                        f"({_first_line(exc)}); use an architecture with OpenCLIP's built-in "
                        "tokenizer (RN50, ViT-B-32, ...)") from None
    return model, preprocess, tokenizer


def _load_ours(cfg: RealExperimentConfig, method: MethodConfig, ckpt: Path, n_classes: int
               ) -> tuple[Any, Any, Any, int | None]:
    from mmclshift.experiments.real import build_method

    model, preprocess, tokenizer = build_method(cfg, method, n_classes)
    state = read_checkpoint(ckpt)
    if not is_our_checkpoint(state):
        raise DataError(f"{ckpt}: not an mmclshift training checkpoint (no "
                        f"{', '.join(OUR_KEYS)})")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"{ckpt}: does not fit method {method.name!r} of the config "
                        f"({_first_line(exc)})") from None
    step = state.get("step")
    return model, preprocess, tokenizer, int(step) if step is not None else None


def smoke_eval(out: str | Path) -> EvalConfig:
    """The built-in fixtures' test set, 3 ImageNet classes, as it lies once
    :func:`~mmclshift.data.fixtures.build_fixtures` has built it under ``out/fixtures``
    (:func:`evaluate_target` builds it with ``smoke=True``, after the models load)."""
    root = Path(out) / "fixtures"
    return EvalConfig(sets=[EvalSetConfig("id", str(root / "eval" / "imagenet"), "imagenet",
                                          subset=str(root / "eval" / "subset3.txt"))],
                      templates="simple", batch_size=64)


def read_eval_section(path: str | Path) -> EvalConfig:
    """The ``eval`` section of an experiment config, or a file that is just that section."""
    data = read_yaml(path)
    section = data.get("eval", data) if isinstance(data.get("eval", data), dict) else None
    if section is None or "sets" not in section:
        raise ConfigError(f"{path}: no test sets (expected an 'eval' section with 'sets', or "
                          "'sets' at the top level)")
    try:
        return from_dict(EvalConfig, section, prefix="eval." if "eval" in data else "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def build_config(target: Target, eval_cfg: EvalConfig, *, name: str, pretrained: str | None,
                 workers: int, device: str) -> CheckpointEvalConfig:
    """The evaluation's config (its identity: the target's files by SHA-256 and the test sets)."""
    if target.cfg is not None:
        methods = [m for m in target.cfg.methods if m.name in target.checkpoints]
        vocab = target.cfg.data.vocab
    else:
        methods = [MethodConfig("clip", "mmcl", "clip")]
        vocab = None
    label = pretrained or (str(target.path) if target.source != "openclip" else target.path.name)
    return CheckpointEvalConfig(
        name=name, source=target.source, target=str(target.path),
        checkpoints={m: str(p) for m, p in target.checkpoints.items()},
        sha256={m: _sha256(p) for m, p in target.checkpoints.items()},
        pretrained=label, model=ModelConfig(target.arch, target.image_size), methods=methods,
        data=EvalDataConfig(vocab, workers, 2), eval=eval_cfg, device=device)


def clip_benchmark_record(rec: dict[str, Any], cfg: CheckpointEvalConfig,
                          es: EvalSetConfig) -> dict[str, Any]:
    """A CLIP_benchmark-style result record of one eval record."""
    standard = not es.subset and not es.classes_file
    dataset = CLIP_BENCHMARK_NAMES.get(es.protocol, es.name) if standard else es.name
    pretrained = cfg.pretrained if cfg.source == "openclip" else f"{cfg.pretrained}:{rec['method']}"
    return {"dataset": dataset, "model": cfg.model.name, "pretrained": pretrained, "task": TASK,
            "metrics": {"acc1": rec["accuracy"], "acc5": rec["top5"],
                        "mean_per_class_recall": rec["mean_per_class_recall"]},
            "language": "en", "split": rec["split"], "method": rec["method"], "n": rec["n"]}


def evaluate_target(target: Target, cfg: CheckpointEvalConfig, out: str | Path, *,
                    force: bool = False, progress: bool = True,
                    smoke: bool = False) -> list[dict[str, Any]]:
    """Score every method of ``target`` on ``cfg.eval``'s test sets into run directory ``out``.

    A directory already holding this evaluation finished is not redone: its records are returned.
    Another config there is refused unless ``force`` (then moved aside). ``smoke``: build the
    fixtures of :func:`smoke_eval` under ``out/fixtures`` once the models have loaded. Nothing is
    written before every model has loaded and every test set resolved.
    """
    from mmclshift.data.captions import load_vocab
    from mmclshift.data.fixtures import build_fixtures
    from mmclshift.evaluate.zeroshot import (
        Scorer,
        TextHeadCache,
        evaluate,
        load_templates,
        resolve_eval_set,
    )
    from mmclshift.threads import torch_threads

    if check_run_dir(out, cfg, force=force) == "done":
        return eval_records(out)
    if not cfg.eval.sets:
        raise UserError("no test sets: give --data FILE (a config with an eval section) or --smoke")

    def resolve() -> list[Any]:
        return [resolve_eval_set(s.name, s.root, s.protocol, subset=s.subset,
                                 classes_file=s.classes_file, mappings_dir=s.mappings_dir,
                                 expected_size=s.expected_size, objectnet_head=s.objectnet_head,
                                 border=s.border) for s in cfg.eval.sets]

    sets = None if smoke else resolve()  # a missing test set fails before any model loads
    load_templates(cfg.eval.templates)
    vocab = load_vocab(cfg.data.vocab) if cfg.data.vocab else None
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    # every model is loaded (and checked) before the run directory is written
    loaded = {}
    for method in cfg.methods:
        ckpt = Path(cfg.checkpoints[method.name])
        if target.source == "openclip":
            model, preprocess, tokenizer = _load_openclip(cfg.model.name, ckpt,
                                                          cfg.model.image_size, method.name)
            step = None
        else:
            assert target.cfg is not None and vocab is not None
            model, preprocess, tokenizer, step = _load_ours(target.cfg, method, ckpt, len(vocab))
        loaded[method.name] = (model.to(device), preprocess, tokenizer, step)
    if smoke:
        build_fixtures(Path(out) / "fixtures")
        sets = resolve()
    assert sets is not None
    run = RunDir.create(out, cfg, seed=cfg.seed, device=str(device), force=force)
    records: list[dict[str, Any]] = []
    cache = TextHeadCache()
    threads = target.cfg.threads if target.cfg is not None else 0
    with run.guard(), torch_threads(threads):
        for method in cfg.methods:
            model, preprocess, tokenizer, step = loaded[method.name]
            scorer = Scorer("clip" if method.kind == "mmcl" else "sl", model,
                            f"{method.name}@{step}", tokenizer=tokenizer, vocab=vocab,
                            templates=cfg.eval.templates, cache=cache)
            for es, ev in zip(cfg.eval.sets, sets, strict=True):
                rec = evaluate(scorer, ev, preprocess, device=device,
                               batch_size=cfg.eval.batch_size, progress=progress,
                               workers=cfg.data.workers, prefetch=cfg.data.prefetch)
                rec = {"event": "eval", "method": method.name,
                       **{k: v for k, v in rec.items() if k != "event"},
                       "step": step, "loss": method.loss, "model": cfg.model.name,
                       "source": cfg.source, "target": cfg.checkpoints[method.name]}
                run.log_metrics(rec)
                atomic_write_text(run.path / "results" / f"{method.name}__{ev.name}.json",
                                  json.dumps(rec, indent=2) + "\n")
                atomic_write_text(run.path / "clip_benchmark" / f"{method.name}__{ev.name}.json",
                                  json.dumps(clip_benchmark_record(rec, cfg, es), indent=2) + "\n")
                records.append(rec)
        run.mark_done({"records": len(records)})
    return records
