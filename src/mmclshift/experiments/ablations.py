"""The theory tier's ablations, on each run's own training draw.

**Intra-class contrasting** (Data Model 1).
For a Data Model 1 run (its config), :func:`intra_class_accuracies` redraws the run's training set
exactly as the run did (:func:`mmclshift.experiments.synthetic.prepare_job`: same data seed, same
geometry), fits the linear MMCL loss in closed form twice on it -- with every negative pair
(``SVD_p(S) / rho``) and with the same-class negative pairs removed (``SVD_p(S_no) / rho``,
:mod:`mmclshift.theory.intra_class`) -- and returns the exact population zero-shot accuracy of
both rules on a test split, beside the population (infinite-n) predictions of both losses.
Both arms see the same data and seed and are solved exactly, so their difference is the
ablation's effect on that draw, free of test-set noise and of optimiser error.

**Inter-class feature sharing** (Data Model 2). :func:`sharing_annotation_accuracies` keeps every
class's geometry (its details, the images, the prompts) and varies only whether the *shared*
details -- those of more than one class -- are written into captions (``data.pi_shared`` 1 vs 0):
the linear loss fitted in closed form on the run's draw (same data seed) under each annotation,
exact population accuracy, beside the population predictions; and the same population
comparison with no spurious shortcut (``p_spu = 1/K``), the control that tells a robustness
effect from a plain accuracy effect.
"""

from __future__ import annotations

from typing import Any

from mmclshift.config import ConfigError, replace
from mmclshift.evaluate.linear import population_accuracy, zero_shot_rule
from mmclshift.experiments.synthetic import SyntheticExperiment, data_model, prepare_job
from mmclshift.theory.intra_class import no_intra_closed_form, no_intra_zero_shot_accuracy
from mmclshift.theory.linear import image_noise_var, mmcl_zero_shot_accuracy
from mmclshift.train.linear import mmcl_closed_form


def intra_class_accuracies(cfg: SyntheticExperiment, split: str = "ood") -> dict[str, Any]:
    """{"with", "without": population accuracy of the two closed-form fits on the run's draw;
    "theory_with", "theory_without": the population minimisers' accuracy}."""
    if cfg.mmcl.loss != "linear":
        raise ConfigError(f"the intra-class ablation is of the linear loss; the run uses mmcl.loss={cfg.mmcl.loss}")
    job = prepare_job(cfg)
    tr, p, rho = job.train, cfg.mmcl.embed_dim, cfg.mmcl.rho
    mixture, D, nv = job.sampler.mixture(split), job.sampler.D_image, image_noise_var(job.model)
    prompts = job.sampler.prompt_inputs()
    out = {}
    for name, enc in (("with", mmcl_closed_form(tr.x_image, tr.x_text, p, rho)),
                      ("without", no_intra_closed_form(tr.x_image, tr.x_text, tr.labels, p, rho))):
        out[name] = population_accuracy(zero_shot_rule(enc, prompts), mixture, D, nv)
    out["theory_with"] = mmcl_zero_shot_accuracy(job.model, split, embed_dim=p, rho=rho)
    out["theory_without"] = no_intra_zero_shot_accuracy(job.model, split, embed_dim=p, rho=rho)
    return out


def _closed_form_accuracy(cfg: SyntheticExperiment, split: str) -> float:
    job = prepare_job(cfg)
    enc = mmcl_closed_form(job.train.x_image, job.train.x_text, cfg.mmcl.embed_dim, cfg.mmcl.rho)
    return population_accuracy(zero_shot_rule(enc, job.sampler.prompt_inputs()), job.sampler.mixture(split),
                               job.sampler.D_image, image_noise_var(job.model))


def sharing_annotation_accuracies(cfg: SyntheticExperiment, split: str = "ood") -> dict[str, Any]:
    """{"with", "without": population accuracy of the closed-form fits on the run's draw with the
    shared details annotated (pi_shared = 1) and not (0); "theory_with", "theory_without"; the
    no-shortcut control "control_with", "control_without" (population, p_spu = 1/K)}."""
    if cfg.kind != "data_model_2":
        raise ConfigError(f"the sharing ablation is of Data Model 2; the run is {cfg.kind}")
    if cfg.mmcl.loss != "linear":
        raise ConfigError(f"the sharing ablation is of the linear loss; the run uses mmcl.loss={cfg.mmcl.loss}")
    if not data_model(cfg).shared_details():
        raise ConfigError("the run's classes share no detail: nothing to ablate")
    p, rho = cfg.mmcl.embed_dim, cfg.mmcl.rho
    out: dict[str, Any] = {}
    for name, v in (("with", 1.0), ("without", 0.0)):
        c = replace(cfg, **{"data.pi_shared": v})
        out[name] = _closed_form_accuracy(c, split)
        out[f"theory_{name}"] = mmcl_zero_shot_accuracy(data_model(c), split, embed_dim=p, rho=rho)
        control = replace(c, **{"data.p_spu": 1.0 / c.data.num_classes})
        out[f"control_{name}"] = mmcl_zero_shot_accuracy(data_model(control), split, embed_dim=p, rho=rho)
    return out


__all__ = ["intra_class_accuracies", "sharing_annotation_accuracies"]
