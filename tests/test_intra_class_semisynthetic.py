"""The intra-class ablation as a semi-synthetic method (mmcl_no_intra)."""

import pytest
import torch

from mmclshift.config import ConfigError, replace
from mmclshift.experiments import semisynthetic as semi
from mmclshift.losses import clip_loss
from mmclshift.train.images import no_intra_loss_fn


def test_no_intra_loss_is_clip_when_every_sample_has_its_own_class_and_differs_otherwise():
    cfg = semi.demo_config()
    model = semi.new_model(cfg, "mmcl_no_intra", torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 14, 14, generator=g)
    tokens = torch.randint(1, len(semi.VOCAB), (6, semi.MAX_CAPTION_LEN), generator=g)
    loss = no_intra_loss_fn(model)
    with torch.no_grad():
        full = clip_loss(model.image(x), model.text(tokens), model.logit_scale.exp())
        distinct = loss(x, torch.cat([tokens, torch.arange(6)[:, None]], 1))
        shared = loss(x, torch.cat([tokens, torch.tensor([0, 0, 0, 1, 1, 1])[:, None]], 1))
    assert distinct == pytest.approx(float(full), abs=1e-6)
    assert abs(float(shared) - float(full)) > 1e-4  # fewer negatives: a different (smaller) loss


def test_a_run_trains_and_evaluates_the_ablation(tmp_path):
    cfg = replace(semi.demo_config(), methods=["mmcl_no_intra"], splits=["ood"],
                  **{"train.steps": 2, "data.n_train": 256})
    recs = semi.run_experiment(cfg, tmp_path / "run", progress=False)
    assert [(r["method"], r["split"]) for r in recs] == [("mmcl_no_intra", "ood")]
    assert 0.0 <= recs[0]["accuracy"] <= 1.0


def test_the_ablation_needs_the_clip_loss():
    with pytest.raises(ConfigError, match="mmcl_no_intra ablates the CLIP loss"):
        replace(semi.demo_config(), methods=["mmcl_no_intra"], **{"mmcl.loss": "linear"})
