"""The intra-class-contrasting ablation in the theory tier, on each run's own training draw.

For a Data Model run (its config), :func:`ablation_accuracies` redraws the run's training set
exactly as the run did (:func:`mmclshift.experiments.synthetic.prepare_job`: same data seed, same
geometry), fits the linear MMCL loss in closed form twice on it -- with every negative pair
(``SVD_p(S) / rho``) and with the same-class negative pairs removed (``SVD_p(S_no) / rho``,
:mod:`mmclshift.theory.intra_class`) -- and returns the exact population zero-shot accuracy of
both rules on a test split, beside the population (infinite-n) predictions of both losses.
Both arms see the same data and seed and are solved exactly, so their difference is the
ablation's effect on that draw, free of test-set noise and of optimiser error.
"""

from __future__ import annotations

from typing import Any

from mmclshift.config import ConfigError
from mmclshift.evaluate.linear import population_accuracy, zero_shot_rule
from mmclshift.experiments.synthetic import SyntheticExperiment, prepare_job
from mmclshift.theory.intra_class import no_intra_closed_form, no_intra_zero_shot_accuracy
from mmclshift.theory.linear import image_noise_var, mmcl_zero_shot_accuracy
from mmclshift.train.linear import mmcl_closed_form


def ablation_accuracies(cfg: SyntheticExperiment, split: str = "ood") -> dict[str, Any]:
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


__all__ = ["ablation_accuracies"]
