"""The linear loss without same-class negative pairs: closed form against hand computation,
brute-force pair sums and large samples."""

import numpy as np
import pytest
import torch

from mmclshift.config import replace
from mmclshift.experiments.ablations import intra_class_accuracies
from mmclshift.experiments.synthetic import (
    DataModel1Experiment,
    DataModel2Experiment,
    data_model,
    prepare_job,
)
from mmclshift.theory.intra_class import (
    cross_covariance_no_intra,
    no_intra_zero_shot_accuracy,
    sample_cross_covariance_no_intra,
)
from mmclshift.theory.linear import cross_covariance, mmcl_zero_shot_accuracy


def test_sample_matrix_equals_the_explicit_pair_sum():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(60, 5, generator=g, dtype=torch.float64), torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    pos = sum(torch.outer(x[i], t[i]) for i in range(60)) / 60
    pairs = [(i, j) for i in range(60) for j in range(60) if y[i] != y[j]]
    neg = sum(torch.outer(x[i], t[j]) for i, j in pairs) / len(pairs)
    assert torch.allclose(sample_cross_covariance_no_intra(x, t, y), pos - neg, atol=1e-12)


def test_binary_closed_form_by_hand():
    # two balanced classes with opposite class means m_+ = -m_-: the full loss's negative term
    # is E[mu] E[mu_T]^T = 0, the ablated one is 1/2 (m_+ (pi m_-)^T + m_- (pi m_+)^T) = -m_+ (pi m_+)^T,
    # so C_no = C + m_+ (pi * m_+)^T with m_+ = [core_mean, spu_mean (2 p_spu - 1), 0]
    cfg = replace(DataModel1Experiment(), **{"data.pi_core": 0.7, "data.pi_spu": 0.4})
    model = data_model(cfg)
    d = cfg.data
    m = np.zeros(model.mixture("train").dim)
    m[0], m[1] = d.core_mean, d.spu_mean * (2 * d.p_spu - 1)
    pi = model.annotation_probs()
    assert np.allclose(cross_covariance_no_intra(model) - cross_covariance(model), np.outer(m, pi * m), atol=1e-12)


@pytest.mark.parametrize("cls", [DataModel1Experiment, DataModel2Experiment])
def test_population_matrix_matches_a_large_sample(cls):
    cfg = replace(cls(), n_train=200_000)
    job = prepare_job(cfg)
    tr, s = job.train, job.sampler
    S = sample_cross_covariance_no_intra(tr.x_image, tr.x_text, tr.labels)
    latent = (s.D_image.double().T @ S @ s.D_text.double()).numpy()  # D has orthonormal columns
    C = cross_covariance_no_intra(job.model)
    # Monte-Carlo error of a second moment at n = 2e5: a few 1e-3 for unit-scale features
    assert np.abs(latent - C).max() < 0.02 * max(1.0, np.abs(C).max())


def test_fits_on_a_draw_approach_the_population_minimisers():
    cfg = replace(DataModel1Experiment(), n_train=20_000)
    acc = intra_class_accuracies(cfg, "ood")
    model = data_model(cfg)
    assert acc["theory_with"] == pytest.approx(mmcl_zero_shot_accuracy(model, "ood", embed_dim=1))
    assert acc["theory_without"] == pytest.approx(no_intra_zero_shot_accuracy(model, "ood", embed_dim=1))
    assert abs(acc["with"] - acc["theory_with"]) < 0.005 and abs(acc["without"] - acc["theory_without"]) < 0.005
    # Data Model 1 at its defaults: intra-class contrasting helps out of distribution
    assert acc["theory_with"] - acc["theory_without"] > 0.01


# --------------------------------------------------------------------------- inter-class sharing ablation


def test_pi_shared_changes_only_the_shared_details_annotation():
    base = replace(DataModel2Experiment(), **{"data.pi_core": 0.9, "data.pi_spu": 0.7})
    m0 = data_model(replace(base, **{"data.pi_shared": 0.0}))
    m1 = data_model(replace(base, **{"data.pi_shared": 1.0}))
    # the chain [[0, 1], [1, 2], [2, 3], [3, 4]]: details 1, 2, 3 belong to two classes each
    assert m0.shared_details() == [1, 2, 3]
    assert list(m0.annotation_probs()) == [0.9, 0.0, 0.0, 0.0, 0.9] + [0.7] * 4
    assert list(m1.annotation_probs()) == [0.9, 1.0, 1.0, 1.0, 0.9] + [0.7] * 4
    assert list(data_model(base).annotation_probs()) == [0.9] * 5 + [0.7] * 4  # unset: pi_core
    # fixed geometry: the images' distribution and the prompts do not move
    for split in ("train", "ood"):
        a, b = m0.mixture(split), m1.mixture(split)
        assert np.array_equal(a.means, b.means) and np.array_equal(a.weights, b.weights)
    assert np.array_equal(m0.prompts(), m1.prompts())


def test_sharing_ablation_on_a_draw_and_its_control():
    from mmclshift.experiments.ablations import sharing_annotation_accuracies

    acc = sharing_annotation_accuracies(replace(DataModel2Experiment(), n_train=20_000), "ood")
    assert abs(acc["with"] - acc["theory_with"]) < 0.03 and abs(acc["without"] - acc["theory_without"]) < 0.03
    control = data_model(replace(DataModel2Experiment(), **{"data.p_spu": 0.25, "data.pi_shared": 1.0}))
    assert acc["control_with"] == pytest.approx(mmcl_zero_shot_accuracy(control, "ood", embed_dim=4))
    with pytest.raises(Exception, match="share no detail"):
        sharing_annotation_accuracies(replace(DataModel2Experiment(), **{"data.sharing": 0.0}), "ood")


def test_pi_shared_at_its_default_keeps_the_test_sets():
    import json

    from mmclshift.config import to_dict
    from mmclshift.experiments.synthetic import _split_seed, split_test_seed

    cfg = DataModel2Experiment()
    point = to_dict(cfg.data)
    del point["pi_shared"]  # the data config as it was before the key existed
    for split in ("id", "ood"):
        assert split_test_seed(cfg, split) == _split_seed(0, f"{split}:{json.dumps(point, sort_keys=True)}")
    assert split_test_seed(replace(cfg, **{"data.pi_shared": 0.0}), "ood") != split_test_seed(cfg, "ood")
