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
from mmclshift.theory.accuracy import batch_rule_accuracies, linear_rule_accuracy


def cross_covariance(model: SyntheticDataModel, split: str = "train") -> np.ndarray:
    """C^Tr = Cov(mu_I, mu_T) (m x m) with caption feature masking (Lemma 3.2, Definition 5.1)."""
    mix = model.mixture(split)
    pi = model.annotation_probs()
    mean = mix.mean()
    return mix.second_moment() * pi[None, :] - np.outer(mean, pi * mean)


#: singular values closer than this fraction of the largest are treated as tied (see rank_cut)
TIE_RTOL = 1e-6
#: bases of a tied block scanned for the range of a prediction (an angle grid when 1 of 2 is kept)
TIE_SAMPLES = 181


def truncate_rank(C: np.ndarray, rank: int) -> np.ndarray:
    """Best rank-``rank`` approximation in Frobenius norm (Eckart-Young), via the SVD."""
    U, s, Vt = np.linalg.svd(C)
    k = min(rank, len(s))
    return (U[:, :k] * s[:k]) @ Vt[:k]


@dataclass
class RankCut:
    """Where SVD_p cuts the spectrum of C^Tr, and whether the cut splits a tied block.

    ``tied`` is the index range [lo, hi) of singular values within ``TIE_RTOL * s_1`` of s_p when
    that block straddles the cut (lo < p < hi): then every choice of p - lo directions inside the
    block's singular subspace gives a minimiser, and the prediction depends on that choice.
    """

    singular_values: np.ndarray
    embed_dim: int
    tied: tuple[int, int] | None

    def warning(self) -> str | None:
        if self.tied is None:
            return None
        lo, hi = self.tied
        vals = ", ".join(f"s{j + 1}={self.singular_values[j]:.6g}" for j in range(lo, hi))
        return (f"embed_dim={self.embed_dim} cuts a tied block of singular values of C^Tr ({vals}; "
                f"gap < {TIE_RTOL:g} s1): any {self.embed_dim - lo} of its {hi - lo} directions "
                "form a minimiser, so the prediction is a range over them")


def rank_cut(C: np.ndarray, embed_dim: int) -> RankCut:
    s = np.linalg.svd(C, compute_uv=False)
    p = min(embed_dim, len(s))
    tied = None
    if 0 < p < len(s):
        tol = TIE_RTOL * max(s[0], 1e-300)
        ref = s[p - 1]
        if ref > tol and ref - s[p] <= tol:
            block = np.flatnonzero(np.abs(s - ref) <= tol)
            tied = (int(block.min()), int(block.max()) + 1)
    return RankCut(s, embed_dim, tied)


def mmcl_bilinears(C: np.ndarray, embed_dim: int, rho: float, *, n_samples: int = TIE_SAMPLES,
                   seed: int = 0) -> tuple[list[np.ndarray], RankCut]:
    """All population MMCL minimisers SVD_p(C)/rho that a tie at the cut allows.

    Without a tie, one matrix. With a tied block of r singular values of which q are kept, the
    minimisers are ``U_keep S V_keep^T + s U_T R R^T V_T^T`` over orthonormal r x q bases R: for
    r = 2, q = 1 an angle grid of ``n_samples`` points; otherwise the coordinate bases plus
    ``n_samples`` random ones (a sampled range).
    """
    cut = rank_cut(C, embed_dim)
    if cut.tied is None:
        return [truncate_rank(C, embed_dim) / rho], cut
    U, s, Vt = np.linalg.svd(C)
    lo, hi = cut.tied
    r, q = hi - lo, embed_dim - lo
    base = (U[:, :lo] * s[:lo]) @ Vt[:lo]
    sig = float(np.mean(s[lo:hi]))
    UT, VT = U[:, lo:hi], Vt[lo:hi].T
    bases: list[np.ndarray] = []
    if r == 2 and q == 1:
        for th in np.linspace(0.0, np.pi, n_samples):
            bases.append(np.array([[np.cos(th)], [np.sin(th)]]))
    else:
        import itertools

        for cols in itertools.combinations(range(r), q):
            bases.append(np.eye(r)[:, list(cols)])
        rng = np.random.default_rng(seed)
        for _ in range(n_samples):
            Q, _ = np.linalg.qr(rng.normal(size=(r, q)))
            bases.append(Q)
    return [(base + sig * (UT @ R) @ (VT @ R).T) / rho for R in bases], cut


def mmcl_bilinear(model: SyntheticDataModel, embed_dim: int, rho: float) -> np.ndarray:
    """The population MMCL minimiser in latent coordinates: M = SVD_p(C^Tr) / rho (the SVD's own
    choice at a tie; :func:`mmcl_bilinears` gives all of them)."""
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
    """Exact population zero-shot accuracy of the MMCL minimiser on ``split`` (Thms 4.4, 4.8, 5.x).

    At a tie (see :func:`rank_cut`) this is the SVD's arbitrary choice; :func:`mmcl_accuracy_range`
    gives the range over all minimisers.
    """
    A = mmcl_score_matrix(model, embed_dim, rho)
    return linear_rule_accuracy(model.mixture(split), A, noise_var=image_noise_var(model))


def mmcl_accuracy_range(model: SyntheticDataModel, split: str, *, embed_dim: int,
                        rho: float = 1.0) -> tuple[float, float, RankCut]:
    """(min, max) zero-shot accuracy over all population MMCL minimisers, and the rank cut."""
    Ms, cut = mmcl_bilinears(cross_covariance(model), embed_dim, rho)
    mix, nv, P = model.mixture(split), image_noise_var(model), model.prompts()
    accs = batch_rule_accuracies([(mix, P @ M.T, None, nv) for M in Ms])
    return min(accs), max(accs), cut


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


SOBOL_POINTS = 2048  # points per mixture component of the K > 2 SL objective


def _multiclass_points(mix: LatentMixture, noise_var: float, n_points: int = SOBOL_POINTS,
                       seed: int = 0) -> torch.Tensor:
    """(C, P, m) fixed scrambled-Sobol draws of mu + eps on each component."""
    m = mix.dim
    z = qmc.Sobol(d=m, scramble=True, seed=seed).random(n_points)
    z = torch.as_tensor(np.clip(_ndtri(z), -8, 8))  # (P, m) standard normals
    # mu + eps = mean_c + L_c z with L_c L_c^T = Sigma_c + noise_var I
    factors = []
    for cov in mix.covs:
        vals, vecs = np.linalg.eigh(cov + noise_var * np.eye(m))
        factors.append(vecs * np.sqrt(np.clip(vals, 0, None)))
    return torch.as_tensor(mix.means)[:, None, :] + torch.einsum(
        "cij,pj->cpi", torch.as_tensor(np.stack(factors)), z
    )


def _multiclass_objective(mix: LatentMixture, noise_var: float, weight_decay: float,
                          n_points: int = SOBOL_POINTS, seed: int = 0):
    K, m = mix.num_classes, mix.dim
    pts = _multiclass_points(mix, noise_var, n_points, seed)
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


def _newton(f, grad_hess, theta0: torch.Tensor, *, max_iter: int = 100,
            tol: float = 1e-22) -> torch.Tensor | None:
    """Damped Newton on a batch of smooth convex objectives (B, q); None if it does not converge.

    ``f(theta) -> (B,)``; ``grad_hess(theta) -> ((B, q), (B, q, q))``. Each iteration solves
    H d = -g and backtracks (Armijo, factor 1/2) per problem; a problem stops when its Newton
    decrement g^T H^-1 g falls below ``tol``.
    """
    theta = theta0.clone()
    q = theta.shape[1]
    eye = torch.eye(q, dtype=theta.dtype)
    for _ in range(max_iter):
        g, H = grad_hess(theta)
        # numpy's solver: torch's batched LU can hang in MKL with several threads
        step = -torch.as_tensor(np.linalg.solve((H + 1e-13 * eye).numpy(), g.unsqueeze(-1).numpy()))[..., 0]
        dec = -(g * step).sum(1)
        if not torch.isfinite(dec).all():
            return None
        if (dec < tol).all():
            return theta
        f0 = f(theta)
        t = torch.ones(len(theta), dtype=theta.dtype)
        live = dec >= tol
        for _ in range(40):
            cand = f(theta + t[:, None] * step)
            bad = live & ~(cand <= f0 - 0.25 * t * dec)
            if not bad.any():
                break
            t = torch.where(bad, 0.5 * t, t)
        theta = theta + torch.where(live, t, torch.zeros_like(t))[:, None] * step
    return None


def _binary_rules(mixes: list[LatentMixture], noise_vars: list[float],
                  weight_decay: float) -> list[np.ndarray] | None:
    """Population logistic rules (v, b) of several binary mixtures of equal shape, by batched
    Newton on the Gauss-Hermite objective of :func:`_binary_objective` (same loss, same nodes)."""
    w = torch.as_tensor(np.stack([mx.weights for mx in mixes]))
    means = torch.as_tensor(np.stack([mx.means for mx in mixes]))
    covs = torch.as_tensor(np.stack([mx.covs for mx in mixes]))
    ysign = torch.as_tensor(np.stack([2.0 * mx.labels - 1.0 for mx in mixes]))
    nv = torch.as_tensor(noise_vars, dtype=torch.float64)
    nodes, gh_w = torch.as_tensor(_GH_NODES), torch.as_tensor(_GH_WEIGHTS)
    m = means.shape[2]

    def loss1(t, w, means, covs, ysign, nv):
        v, b = t[:m], t[m]
        mean = ysign * (means @ v + b)
        var = torch.einsum("i,cij,j->c", v, covs, v) + nv * (v @ v)
        margins = mean[:, None] + torch.sqrt(var)[:, None] * nodes[None, :]
        return (w[:, None] * gh_w[None, :] * torch.nn.functional.softplus(-margins)).sum() \
            + 0.5 * weight_decay * (v @ v)

    data = (w, means, covs, ysign, nv)
    vf = torch.func.vmap(loss1)
    vg = torch.func.vmap(torch.func.grad(loss1))
    vh = torch.func.vmap(torch.func.hessian(loss1))
    # start on the difference of the class means (a zero v has an undefined margin variance)
    lab = torch.as_tensor(np.stack([mx.labels for mx in mixes]), dtype=torch.float64)
    diff = torch.einsum("bc,bci->bi", w * lab, means) / (w * lab).sum(1, keepdim=True) - torch.einsum(
        "bc,bci->bi", w * (1 - lab), means) / (w * (1 - lab)).sum(1, keepdim=True)
    theta0 = torch.cat([0.1 * diff, torch.zeros(len(mixes), 1, dtype=torch.float64)], 1)
    theta = _newton(lambda t: vf(t, *data), lambda t: (vg(t, *data), vh(t, *data)), theta0)
    return None if theta is None else list(theta.numpy())


def _multiclass_rule(mix: LatentMixture, noise_var: float, weight_decay: float) -> np.ndarray | None:
    """The softmax rule minimising the Sobol-sample objective of :func:`_multiclass_objective`,
    by Newton with the exact Hessian: first on the first 256 points, then on all of them."""
    K, m = mix.num_classes, mix.dim
    pts_all = _multiclass_points(mix, noise_var)  # (C, P, m)
    w_c = torch.as_tensor(mix.weights)
    labels = torch.as_tensor(mix.labels)
    q = K * (m + 1)
    # the objective is invariant to adding a constant to every intercept: pin that direction
    u = torch.zeros(q, dtype=torch.float64)
    u[K * m :] = 1.0 / np.sqrt(K)
    pin = torch.outer(u, u)
    theta = torch.zeros(1, q, dtype=torch.float64)
    for n_pts in (256, pts_all.shape[1]):
        pts = pts_all[:, :n_pts]
        C, P = pts.shape[:2]
        X = torch.cat([pts, torch.ones(C, P, 1, dtype=torch.float64)], 2).reshape(C * P, m + 1)
        omega = (w_c[:, None] / P).expand(C, P).reshape(-1)
        Y = torch.nn.functional.one_hot(labels[:, None].expand(C, P).reshape(-1), K).double()
        XX = (X[:, :, None] * X[:, None, :]).reshape(C * P, -1)

        def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return t[0, : K * m].view(K, m), t[0, K * m :]

        def f(t: torch.Tensor, X=X, omega=omega, Y=Y) -> torch.Tensor:
            W, b = split(t)
            logp = torch.log_softmax(X[:, :m] @ W.T + b, dim=1)
            return (-(omega * (Y * logp).sum(1)).sum() + 0.5 * weight_decay * (W * W).sum()).reshape(1)

        def grad_hess(t: torch.Tensor, X=X, omega=omega, Y=Y, XX=XX):
            W, b = split(t)
            s = torch.softmax(X[:, :m] @ W.T + b, dim=1)  # (N, K)
            G = ((s - Y) * omega[:, None]).T @ X  # (K, m+1)
            G[:, :m] += weight_decay * W
            g = torch.cat([G[:, :m].reshape(-1), G[:, m]])
            T = (torch.diag_embed(s) - s[:, :, None] * s[:, None, :]) * omega[:, None, None]
            H4 = (T.reshape(-1, K * K).T @ XX).view(K, K, m + 1, m + 1).permute(0, 2, 1, 3)
            # reorder (k, i, l, j) to the parameter layout [W (k, i<m) ..., b (k)]
            perm = [k * (m + 1) + i for k in range(K) for i in range(m)] + [k * (m + 1) + m for k in range(K)]
            H = H4.reshape(K * (m + 1), K * (m + 1))[perm][:, perm].clone()
            H[: K * m, : K * m] += weight_decay * torch.eye(K * m, dtype=torch.float64)
            return g[None], (H + pin)[None]

        theta = _newton(f, grad_hess, theta)
        if theta is None:
            return None
    return theta[0].numpy()


def _rule_key(mix: LatentMixture, noise_var: float, weight_decay: float) -> bytes:
    parts = [mix.weights, mix.means, mix.covs, mix.labels.astype(np.float64),
             np.array([noise_var, weight_decay, mix.num_classes], dtype=np.float64)]
    return b"".join(np.ascontiguousarray(p).tobytes() for p in parts)


_RULE_CACHE: dict[bytes, LinearRule] = {}
_RULE_CACHE_MAX = 4096


def _as_rule(theta: np.ndarray, K: int, m: int) -> LinearRule:
    if K == 2:
        v, b = theta[:m], theta[m]
        return LinearRule(np.stack([-0.5 * v, 0.5 * v]), np.array([-0.5 * b, 0.5 * b]))
    return LinearRule(theta[: K * m].reshape(K, m).copy(), theta[K * m :].copy())


def sl_population_rules(models: list[SyntheticDataModel], weight_decay: float) -> list[LinearRule]:
    """:func:`sl_population_rule` for many data models, binary ones batched, each distinct training
    distribution solved once (the rule does not depend on the caption probabilities ``pi``)."""
    out: list[LinearRule | None] = [None] * len(models)
    todo: dict[bytes, list[int]] = {}
    mixes: dict[bytes, tuple[LatentMixture, float]] = {}
    for i, model in enumerate(models):
        mix, nv = model.mixture("train"), image_noise_var(model)
        key = _rule_key(mix, nv, weight_decay)
        if key in _RULE_CACHE:
            out[i] = _RULE_CACHE[key]
        else:
            todo.setdefault(key, []).append(i)
            mixes[key] = (mix, nv)
    binary: dict[tuple, list[bytes]] = {}
    for key, (mix, _) in mixes.items():
        if mix.num_classes == 2:
            binary.setdefault((len(mix.components), mix.dim), []).append(key)
        else:
            theta = _multiclass_rule(mix, mixes[key][1], weight_decay)
            _store(key, _as_rule(theta, mix.num_classes, mix.dim) if theta is not None
                   else _lbfgs_rule(mix, mixes[key][1], weight_decay))
    for keys in binary.values():
        thetas = _binary_rules([mixes[k][0] for k in keys], [mixes[k][1] for k in keys], weight_decay)
        for j, key in enumerate(keys):
            mix, nv = mixes[key]
            _store(key, _as_rule(thetas[j], 2, mix.dim) if thetas is not None
                   else _lbfgs_rule(mix, nv, weight_decay))
    for key, idx in todo.items():
        for i in idx:
            out[i] = _RULE_CACHE[key]
    return out  # type: ignore[return-value]


def _store(key: bytes, rule: LinearRule) -> None:
    if len(_RULE_CACHE) >= _RULE_CACHE_MAX:
        _RULE_CACHE.clear()
    _RULE_CACHE[key] = rule


def _lbfgs_rule(mix: LatentMixture, noise_var: float, weight_decay: float) -> LinearRule:
    """The L-BFGS fallback (used where Newton does not converge)."""
    K, m = mix.num_classes, mix.dim
    if K == 2:
        f = _binary_objective(mix, noise_var, weight_decay)
        x0 = np.zeros(m + 1)
    else:
        f = _multiclass_objective(mix, noise_var, weight_decay)
        x0 = np.zeros(K * m + K)
    res = optimize.minimize(f, x0, jac=True, method="L-BFGS-B",
                            options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15})
    return _as_rule(res.x, K, m)


def sl_population_rule(model: SyntheticDataModel, weight_decay: float) -> LinearRule:
    """The population minimiser of the SL loss (logistic / softmax CE + weight decay).

    Returned in latent coordinates (the optimum lies in span(D_I)); binary rules are returned as
    two class scores (-s/2, +s/2), matching :meth:`LinearClassifier.class_scores`. Solved by
    Newton's method with exact Hessians (L-BFGS as the fallback); results are cached per
    training distribution.
    """
    return sl_population_rules([model], weight_decay)[0]


def sl_accuracy(model: SyntheticDataModel, split: str, rule: LinearRule) -> float:
    """Exact population accuracy of an SL rule (latent coordinates) on ``split``."""
    return linear_rule_accuracy(model.mixture(split), rule.A, rule.b, noise_var=image_noise_var(model))
