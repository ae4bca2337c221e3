"""Closed-form population predictions for the linear models of Sections 3-5.

MMCL (Section 3). The linear contrastive loss with regulariser ``rho/2 ||W_I^T W_T||_F^2`` is
``-<W_I^T W_T, S> + rho/2 ||W_I^T W_T||_F^2`` with

    S = 1/n sum_i x_I,i x_T,i^T - 1/(n(n-1)) sum_{i!=j} x_I,i x_T,j^T
      = 1/(n-1) sum_i (x_I,i - xbar_I)(x_T,i - xbar_T)^T          (the sample cross-covariance),

so its minimiser over rank-p products is ``W_I^T W_T = SVD_p(S) / rho`` (Eckart-Young). In the
population S = D_I C^Tr D_T^T, where ``C^Tr = Cov(mu_I, mu_T)`` on the training distribution
(Lemma 3.2); the input noise is independent between modalities and contributes nothing. Hence the
similarity of an image with latent mu' (plus projected noise) and a noise-free text with latent
mu'' is ``mu'^T SVD_p(C^Tr) mu'' / rho`` -- Lemma 3.2's ``mu'^T C^Tr mu''`` when p >= rank C^Tr.

Under feature masking (Definition 5.1), ``C^Tr = E[mu mu^T] diag(pi) - E[mu] (pi * E[mu])^T``.
With full-rank embeddings a per-column scaling of C^Tr leaves a core-only prompt's decision
unchanged, so caption richness acts through the rank limit p: ``SVD_p`` keeps the directions with
the largest singular values, and a rarely-annotated core feature loses them to the spurious one.

SL. The SL baseline is a linear classifier on x_I trained with the logistic (binary) or softmax
cross-entropy (K > 2) loss and weight decay ``lambda/2 ||w||^2``. Its population solution is found
numerically: directions of input space orthogonal to span(D_I) carry only independent noise, so
the regularised optimum lies in span(D_I), where the input is mu + eps with
``eps ~ N(0, sigma_xi^2/d_I I_m)``. The expected loss is computed with Gauss-Hermite quadrature
(binary; each margin is a 1-D Gaussian per mixture component) or a fixed scrambled Sobol sample
(K > 2), and minimised with L-BFGS. Theorem 4.3 (Sagawa et al.'s Theorem 1) bounds the accuracy of
the *max-margin* classifier in the over-parameterised regime; the quantity computed here is the
exact population accuracy of the regularised logistic solution, which the trainer approaches as
n_train grows.

All accuracies are exact Gaussian probabilities (:mod:`mmclshift.theory.accuracy`), not bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize
from scipy.stats import qmc

from mmclshift.data.latent import LatentMixture
from mmclshift.data.synthetic import SyntheticDataModel
from mmclshift.theory.accuracy import linear_rule_accuracy


def cross_covariance(model: SyntheticDataModel, split: str = "train") -> np.ndarray:
    """C^Tr = Cov(mu_I, mu_T) (m x m) with caption feature masking (Lemma 3.2, Definition 5.1)."""
    mix = model.mixture(split)
    pi = model.annotation_probs()
    mean = mix.mean()
    return mix.second_moment() * pi[None, :] - np.outer(mean, pi * mean)


def truncate_rank(C: np.ndarray, rank: int) -> np.ndarray:
    """Best rank-``rank`` approximation in Frobenius norm (Eckart-Young), via the SVD."""
    U, s, Vt = np.linalg.svd(C)
    k = min(rank, len(s))
    return (U[:, :k] * s[:k]) @ Vt[:k]


def mmcl_bilinear(model: SyntheticDataModel, embed_dim: int, rho: float) -> np.ndarray:
    """The population MMCL minimiser in latent coordinates: M = SVD_p(C^Tr) / rho."""
    return truncate_rank(cross_covariance(model), embed_dim) / rho


def image_noise_var(model: SyntheticDataModel) -> float:
    """Variance of the image noise projected on each latent coordinate: sigma_xi^2 / d_I."""
    return model.input.sigma_xi**2 / model.input.d_image


def mmcl_score_matrix(model: SyntheticDataModel, embed_dim: int, rho: float) -> np.ndarray:
    """(K, m) matrix A with zero-shot class scores A (mu + eps): A_k = (M mu_prompt(k))^T."""
    M = mmcl_bilinear(model, embed_dim, rho)
    return model.prompts() @ M.T


def mmcl_zero_shot_accuracy(model: SyntheticDataModel, split: str, *, embed_dim: int,
                            rho: float = 1.0) -> float:
    """Exact population zero-shot accuracy of the MMCL minimiser on ``split`` (Thms 4.4, 4.8, 5.x)."""
    A = mmcl_score_matrix(model, embed_dim, rho)
    return linear_rule_accuracy(model.mixture(split), A, noise_var=image_noise_var(model))


# --------------------------------------------------------------------------- SL


@dataclass
class LinearRule:
    """Class scores A (mu + eps) + b in latent coordinates."""

    A: np.ndarray  # (K, m)
    b: np.ndarray  # (K,)


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(96)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def _binary_objective(mix: LatentMixture, noise_var: float, weight_decay: float):
    w = torch.as_tensor(mix.weights)
    means = torch.as_tensor(mix.means)
    covs = torch.as_tensor(mix.covs)
    ysign = torch.as_tensor(2.0 * mix.labels - 1.0)
    nodes = torch.as_tensor(_GH_NODES)
    gh_w = torch.as_tensor(_GH_WEIGHTS)
    m = mix.dim

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        v, b = t[:m], t[m]
        mean = ysign * (means @ v + b)
        var = torch.einsum("i,cij,j->c", v, covs, v) + noise_var * (v @ v)
        sd = torch.sqrt(var + 1e-300)
        margins = mean[:, None] + sd[:, None] * nodes[None, :]
        loss = (w[:, None] * gh_w[None, :] * torch.nn.functional.softplus(-margins)).sum()
        loss = loss + 0.5 * weight_decay * (v @ v)
        loss.backward()
        return float(loss.detach()), t.grad.numpy().copy()

    return f


def _multiclass_objective(mix: LatentMixture, noise_var: float, weight_decay: float,
                          n_points: int = 2048, seed: int = 0):
    K, m = mix.num_classes, mix.dim
    z = qmc.Sobol(d=m, scramble=True, seed=seed).random(n_points)
    z = torch.as_tensor(np.clip(_ndtri(z), -8, 8))  # (P, m) standard normals
    # mu + eps = mean_c + L_c z with L_c L_c^T = Sigma_c + noise_var I
    factors = []
    for cov in mix.covs:
        vals, vecs = np.linalg.eigh(cov + noise_var * np.eye(m))
        factors.append(vecs * np.sqrt(np.clip(vals, 0, None)))
    pts = torch.as_tensor(mix.means)[:, None, :] + torch.einsum(
        "cij,pj->cpi", torch.as_tensor(np.stack(factors)), z
    )  # (C, P, m)
    labels = torch.as_tensor(mix.labels)
    w = torch.as_tensor(mix.weights)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        W, b = t[: K * m].view(K, m), t[K * m :]
        logits = pts @ W.T + b  # (C, P, K)
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp[torch.arange(len(labels)), :, labels].mean(dim=1)  # (C,)
        loss = (w * nll).sum() + 0.5 * weight_decay * (W * W).sum()
        loss.backward()
        return float(loss.detach()), t.grad.numpy().copy()

    return f


def _ndtri(u: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(u)


def sl_population_rule(model: SyntheticDataModel, weight_decay: float) -> LinearRule:
    """The population minimiser of the SL loss (logistic / softmax CE + weight decay).

    Returned in latent coordinates (the optimum lies in span(D_I)); binary rules are returned as
    two class scores (-s/2, +s/2), matching :meth:`LinearClassifier.class_scores`.
    """
    mix = model.mixture("train")
    noise_var = image_noise_var(model)
    K, m = mix.num_classes, mix.dim
    if K == 2:
        f = _binary_objective(mix, noise_var, weight_decay)
        res = optimize.minimize(f, np.zeros(m + 1), jac=True, method="L-BFGS-B",
                                options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15})
        v, b = res.x[:m], res.x[m]
        return LinearRule(np.stack([-0.5 * v, 0.5 * v]), np.array([-0.5 * b, 0.5 * b]))
    f = _multiclass_objective(mix, noise_var, weight_decay)
    res = optimize.minimize(f, np.zeros(K * m + K), jac=True, method="L-BFGS-B",
                            options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15})
    return LinearRule(res.x[: K * m].reshape(K, m), res.x[K * m :])


def sl_accuracy(model: SyntheticDataModel, split: str, rule: LinearRule) -> float:
    """Exact population accuracy of an SL rule (latent coordinates) on ``split``."""
    return linear_rule_accuracy(model.mixture(split), rule.A, rule.b, noise_var=image_noise_var(model))
