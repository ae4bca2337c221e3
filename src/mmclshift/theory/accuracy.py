"""Exact population accuracy of linear score rules on Gaussian-mixture latents.

A linear score rule assigns an input with latent ``mu`` and (projected) input noise ``eps`` to
``argmax_k  A_k . (mu + eps) + b_k``. On each mixture component the K-1 score margins
``s_y - s_k`` are jointly Gaussian, so the probability of a correct decision is a Gaussian orthant
probability: a normal CDF for two classes (closed form) and ``scipy``'s multivariate normal CDF
(Genz's algorithm, absolute error below 1e-4 per component) for more. Exact ties (a margin with zero mean and zero
variance) are broken uniformly at random, as :func:`mmclshift.evaluate.predict` does.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from mmclshift.data.latent import LatentMixture

_MVN_ABSEPS = 1e-4


def linear_rule_accuracy(
    mixture: LatentMixture,
    A: np.ndarray,
    b: np.ndarray | None = None,
    noise_var: float = 0.0,
    *,
    noise_A: np.ndarray | None = None,
    per_component: bool = False,
) -> float | np.ndarray:
    """P(argmax_k (A mu + noise_A xi + b)_k == y), mu ~ mixture, xi ~ N(0, noise_var I).

    ``A`` is (K, m). ``noise_A`` (K, q) maps the input noise into scores; it defaults to ``A``
    (noise already projected onto the latent coordinates). A trained input-space classifier
    ``A_x`` (K, d) has ``A = A_x D`` and ``noise_A = A_x``. Returns the accuracy, or the
    per-component accuracies if asked.
    """
    A = np.asarray(A, dtype=np.float64)
    K, m = A.shape
    if m != mixture.dim:
        raise ValueError(f"score matrix has {m} columns but the latent has {mixture.dim} features")
    b = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    noise_A = A if noise_A is None else np.asarray(noise_A, dtype=np.float64)
    accs = np.empty(len(mixture.components))
    for c, comp in enumerate(mixture.components):
        y = comp.label
        others = [k for k in range(K) if k != y]
        D = A[y][None, :] - A[others]  # (K-1, m)
        mean = D @ comp.mean + (b[y] - b[others])
        Dn = noise_A[y][None, :] - noise_A[others]
        cov = D @ comp.cov @ D.T + noise_var * (Dn @ Dn.T)
        accs[c] = _orthant_probability(mean, cov)
    if per_component:
        return accs
    return float(mixture.weights @ accs)


def _orthant_probability(mean: np.ndarray, cov: np.ndarray) -> float:
    """P(z > 0 elementwise) for z ~ N(mean, cov), with ties (zero-variance, zero-mean) split."""
    var = np.diag(cov).copy()
    scale = max(1.0, float(np.abs(mean).max(initial=0.0)), float(var.max(initial=0.0)))
    degenerate = var <= 1e-14 * scale
    # zero-variance margins are deterministic: a negative one loses, a zero one ties
    det_mean = mean[degenerate]
    if np.any(det_mean < -1e-12 * scale):
        return 0.0
    n_ties = int(np.sum(np.abs(det_mean) <= 1e-12 * scale))
    live = ~degenerate
    mean, cov = mean[live], cov[np.ix_(live, live)]
    if mean.size == 0:
        p = 1.0
    elif mean.size == 1:
        p = float(stats.norm.cdf(mean[0] / np.sqrt(cov[0, 0])))
    else:
        sd = np.sqrt(np.diag(cov))
        corr = cov / np.outer(sd, sd)
        corr = corr + 1e-10 * np.eye(len(sd))
        # Genz's randomised quasi-Monte Carlo; a fixed seed makes the result deterministic
        p = float(
            stats.multivariate_normal.cdf(
                mean / sd, mean=np.zeros(len(sd)), cov=corr, allow_singular=True,
                maxpts=50_000 * len(sd), abseps=_MVN_ABSEPS, releps=0, rng=np.random.default_rng(0),
            )
        )
    # with n_ties exact ties among K classes, a uniform tie-break wins with prob 1/(n_ties + 1)
    return p / (n_ties + 1)
