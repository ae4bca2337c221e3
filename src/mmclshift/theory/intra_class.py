"""The intra-class-contrasting ablation of the linear MMCL loss, in closed form.

The paper's ablation (Figure 3c) removes the negative pairs whose two samples share a class. For
the linear loss of Section 3 the negative term then averages over *different-class* pairs only::

    L_no_intra(W) = -1/n sum_i s(i, i) + 1/|P| sum_{(i, j) in P} s(i, j) + rho/2 ||W_I^T W_T||_F^2,
    P = {(i, j): y_i != y_j},   s(i, j) = x_I,i^T W_I^T W_T x_T,j,

which is ``-<W_I^T W_T, S_no> + rho/2 ||W_I^T W_T||^2`` with

    S_no = 1/n sum_i x_I,i x_T,i^T - 1/|P| sum_{(i, j) in P} x_I,i x_T,j^T.

As for the full loss (:mod:`mmclshift.theory.linear`), Eckart-Young gives the minimiser over rank-p
products: ``W_I^T W_T = SVD_p(S_no) / rho``. In the population, with class priors ``p_y``, class
means ``m_y = E[mu | y]`` and feature masking ``E[mu_T | y] = pi * m_y`` (Definition 5.1; the
input noise is independent between modalities and drops out), ``S_no = D_I C_no D_T^T`` with

    C_no = E[mu mu^T] diag(pi) - sum_{y != y'} w_{y y'} m_y (pi * m_{y'})^T,
    w_{y y'} = p_y p_{y'} / (1 - sum_k p_k^2).

Compare the full loss: ``C = E[mu mu^T] diag(pi) - sum_{y, y'} p_y p_{y'} m_y (pi * m_{y'})^T``.
Without same-class negatives the within-class variation of a feature is no longer contrasted
away from its between-class signal: the positive term keeps all of ``E[mu mu^T]``, so directions
that separate the classes (the spurious feature included) dominate the spectrum.

:func:`sample_cross_covariance_no_intra` is the same matrix on a data set (exact, via class
sums), :func:`no_intra_closed_form` its minimiser, and :func:`no_intra_zero_shot_accuracy` the
exact population zero-shot accuracy of the population minimiser.
"""

from __future__ import annotations

import numpy as np
import torch

from mmclshift.data.synthetic import SyntheticDataModel
from mmclshift.models.linear import LinearEncoders
from mmclshift.theory.accuracy import linear_rule_accuracy
from mmclshift.theory.linear import image_noise_var, truncate_rank


def class_means(model: SyntheticDataModel, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(priors p_y (K,), class means m_y (K, m)) of the latent features on ``split``."""
    mix = model.mixture(split)
    priors = mix.class_priors()
    means = np.zeros((len(priors), mix.dim))
    for w, lab, mean in zip(mix.weights, mix.labels, mix.means, strict=True):
        means[lab] += w * mean
    return priors, means / priors[:, None]


def cross_covariance_no_intra(model: SyntheticDataModel, split: str = "train") -> np.ndarray:
    """C_no (m x m): the linear loss's cross-covariance without same-class negative pairs."""
    mix = model.mixture(split)
    pi = model.annotation_probs()
    priors, means = class_means(model, split)
    w = np.outer(priors, priors)
    np.fill_diagonal(w, 0.0)
    w /= 1.0 - float((priors**2).sum())
    return mix.second_moment() * pi[None, :] - means.T @ w @ (means * pi[None, :])


def sample_cross_covariance_no_intra(x_img: torch.Tensor, x_txt: torch.Tensor,
                                     labels: torch.Tensor) -> torch.Tensor:
    """S_no on a data set: mean of x_I,i x_T,i^T minus the mean over different-class pairs."""
    x, t = x_img.double(), x_txt.double()
    n = x.shape[0]
    pos = x.T @ t / n
    neg = torch.outer(x.sum(0), t.sum(0))
    pairs = float(n * n)
    for y in torch.unique(labels):
        sel = labels == y
        neg -= torch.outer(x[sel].sum(0), t[sel].sum(0))
        pairs -= float(sel.sum()) ** 2
    return pos - neg / pairs


def no_intra_closed_form(x_img: torch.Tensor, x_txt: torch.Tensor, labels: torch.Tensor,
                         embed_dim: int, rho: float) -> LinearEncoders:
    """The exact minimiser of the ablated linear loss on a data set: SVD_p(S_no) / rho."""
    S = sample_cross_covariance_no_intra(x_img, x_txt, labels)
    return LinearEncoders.from_product(S / rho, embed_dim).to(device=x_img.device, dtype=x_img.dtype)


def no_intra_zero_shot_accuracy(model: SyntheticDataModel, split: str, *, embed_dim: int,
                                rho: float = 1.0) -> float:
    """Exact population zero-shot accuracy on ``split`` of the ablated loss's population minimiser
    (the SVD's own choice at a tie of singular values)."""
    M = truncate_rank(cross_covariance_no_intra(model), embed_dim) / rho
    return linear_rule_accuracy(model.mixture(split), model.prompts() @ M.T, noise_var=image_noise_var(model))


__all__ = ["class_means", "cross_covariance_no_intra", "no_intra_closed_form", "no_intra_zero_shot_accuracy",
           "sample_cross_covariance_no_intra"]
