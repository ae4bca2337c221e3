"""Closed-form theory vs independent truths (Monte Carlo, SVD, trained models)."""

import numpy as np
import pytest
import torch
from scipy import stats

from mmclshift.config import replace
from mmclshift.data.latent import Component, LatentMixture
from mmclshift.data.synthetic import (
    DataModel1,
    DataModel1Config,
    DataModel2,
    DataModel2Config,
    Sampler,
)
from mmclshift.experiments.synthetic import DataModel1Experiment
from mmclshift.theory.accuracy import linear_rule_accuracy
from mmclshift.theory.linear import cross_covariance, mmcl_zero_shot_accuracy, truncate_rank
from mmclshift.train.linear import (
    MMCLConfig,
    OptimConfig,
    cross_covariance_matrix,
    mmcl_closed_form,
    train_mmcl,
)


def test_two_class_accuracy_hand_computed():
    # one Gaussian per class on a line: mu ~ N(+-1, 0.5^2), rule sign(mu): accuracy Phi(1 / 0.5)
    comps = [Component(0.5, 0, np.array([-1.0]), np.array([[0.25]])),
             Component(0.5, 1, np.array([1.0]), np.array([[0.25]]))]
    mix = LatentMixture(comps, ["f"], 2)
    A = np.array([[-1.0], [1.0]])
    assert linear_rule_accuracy(mix, A) == pytest.approx(stats.norm.cdf(2.0), abs=1e-12)
    # with input noise of variance 0.75 the std becomes 1: Phi(1)
    assert linear_rule_accuracy(mix, A, noise_var=0.75) == pytest.approx(stats.norm.cdf(1.0), abs=1e-12)
    # biases -+0.25: margin s_1 - s_0 = 2 mu + 0.5, so the threshold moves to mu = -0.25:
    # class 0 right w.p. Phi((1 - 0.25) / 0.5), class 1 w.p. Phi((1 + 0.25) / 0.5)
    b = np.array([-0.25, 0.25])
    want = 0.5 * (stats.norm.cdf(1.5) + stats.norm.cdf(2.5))
    assert linear_rule_accuracy(mix, A, b) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("K", [2, 4])
def test_multiclass_accuracy_matches_monte_carlo(K):
    rng = np.random.default_rng(K)
    m = 3
    comps = []
    for k in range(K):
        L = rng.normal(size=(m, m)) * 0.6
        comps.append(Component(1.0 / K, k, rng.normal(size=m) * 1.5, L @ L.T))
    mix = LatentMixture(comps, ["a", "b", "c"], K)
    A, b = rng.normal(size=(K, m)), rng.normal(size=K) * 0.3
    exact = linear_rule_accuracy(mix, A, b, noise_var=0.2)
    n = 400_000
    mu, y, _ = mix.sample(n, torch.Generator().manual_seed(1), dtype=torch.float64)
    x = mu.numpy() + np.sqrt(0.2) * rng.normal(size=(n, m))
    mc = np.mean(np.argmax(x @ A.T + b, axis=1) == y.numpy())
    se = np.sqrt(exact * (1 - exact) / n)
    assert abs(mc - exact) < 4 * se + 2e-4  # 4 MC standard errors + Genz's 1e-4 per component


def test_cross_covariance_matches_samples():
    """C^Tr (Lemma 3.2 with masking) against the empirical cross-covariance of sampled latents."""
    model = DataModel1(DataModel1Config(pi_core=0.6, pi_spu=0.3))
    batch = Sampler(model, dtype=torch.float64).sample("train", 400_000, torch.Generator().manual_seed(0))
    emp = cross_covariance_matrix(batch.mu_image, batch.mu_text).numpy()
    prod = (batch.mu_image - batch.mu_image.mean(0))[:, :, None] * (batch.mu_text - batch.mu_text.mean(0))[:, None, :]
    se = prod.std(0).numpy() / np.sqrt(len(batch))
    assert np.all(np.abs(emp - cross_covariance(model)) < 5 * se + 1e-9)


def test_input_space_S_is_D_C_D():
    model = DataModel2(DataModel2Config(pi_core=0.7))
    sampler = Sampler(model, dtype=torch.float64)
    batch = sampler.sample("train", 200_000, torch.Generator().manual_seed(3))
    S = cross_covariance_matrix(batch.x_image, batch.x_text)
    want = sampler.D_image @ torch.as_tensor(cross_covariance(model)) @ sampler.D_text.T
    assert torch.linalg.matrix_norm(S - want, ord=2) < 0.03 * torch.linalg.matrix_norm(want, ord=2)


def test_S_equals_the_loss_definition():
    """S = 1/n sum_i x_i t_i^T - 1/(n(n-1)) sum_{i!=j} x_i t_j^T, computed literally."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 2, generator=g, dtype=torch.float64)
    n = 7
    lit = sum(torch.outer(x[i], t[i]) for i in range(n)) / n
    lit = lit - sum(torch.outer(x[i], t[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert torch.allclose(cross_covariance_matrix(x, t), lit)


@pytest.mark.parametrize("batch_size", [0, 4000])
def test_gradient_descent_reaches_closed_form(batch_size):
    """GD on the paper's linear loss converges to SVD_p(S)/rho (full batch and minibatch)."""
    model = DataModel2(DataModel2Config())
    batch = Sampler(model).sample("train", 8000, torch.Generator().manual_seed(0))
    cfg = MMCLConfig(embed_dim=4, rho=1.0, optim=OptimConfig(optimizer="adam", lr=0.02, steps=1500, batch_size=batch_size))
    gd = train_mmcl(batch.x_image, batch.x_text, cfg, torch.Generator().manual_seed(1)).product().detach()
    cf = mmcl_closed_form(batch.x_image, batch.x_text, 4, 1.0).product().detach()
    rel = torch.linalg.matrix_norm(gd - cf) / torch.linalg.matrix_norm(cf)
    assert rel < (0.02 if batch_size == 0 else 0.08)


def test_lemma_3_2_similarity():
    """Image-text similarity of the trained closed form ~ mu'^T SVD_p(C^Tr) mu'' / rho."""
    model = DataModel1(DataModel1Config())
    sampler = Sampler(model, dtype=torch.float64)
    batch = sampler.sample("train", 200_000, torch.Generator().manual_seed(0))
    enc = mmcl_closed_form(batch.x_image, batch.x_text, embed_dim=3, rho=2.0)
    mu1 = torch.tensor([[1.0, -1.0, 0.5], [0.3, 0.2, -1.0]], dtype=torch.float64)
    mu2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    sim = enc.encode_image(mu1 @ sampler.D_image.T) @ enc.encode_text(mu2 @ sampler.D_text.T).T
    want = mu1 @ torch.as_tensor(cross_covariance(model)) @ mu2.T / 2.0
    assert torch.allclose(sim.detach(), want, atol=0.02)


def test_truncate_rank_is_eckart_young():
    rng = np.random.default_rng(0)
    C = rng.normal(size=(5, 5))
    C1 = truncate_rank(C, 2)
    assert np.linalg.matrix_rank(C1) == 2
    s = np.linalg.svd(C, compute_uv=False)
    assert np.linalg.norm(C - C1) == pytest.approx(np.sqrt(np.sum(s[2:] ** 2)))


def test_masking_is_scale_invariant_at_full_rank():
    """With p >= m, pi_core rescales a column of C^Tr and leaves the zero-shot decision unchanged."""
    for pi in (1.0, 0.3, 0.05):
        m = DataModel1(DataModel1Config(pi_core=pi))
        assert mmcl_zero_shot_accuracy(m, "ood", embed_dim=3) == pytest.approx(
            mmcl_zero_shot_accuracy(DataModel1(DataModel1Config()), "ood", embed_dim=3), abs=1e-9)


def test_theory_predicts_the_paper_trends():
    """The closed forms alone show the claims the trained-model tests check."""
    from mmclshift.experiments.synthetic import theory_predictions

    base = theory_predictions(DataModel1Experiment())
    assert base[("mmcl", "ood")] > base[("sl", "ood")] + 0.1
    assert base[("sl", "id")] > base[("mmcl", "id")]  # SL wins in distribution
    low = theory_predictions(replace(DataModel1Experiment(), **{"data.pi_core": 0.05}))
    assert low[("mmcl", "ood")] <= low[("sl", "ood")]
