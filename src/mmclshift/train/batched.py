"""Many small synthetic jobs trained as one batched tensor program.

Jobs of a synthetic kind whose MMCL uses the linear loss with full-batch Adam, and whose SL uses
the regularised logistic / softmax loss, are trained together:

* **MMCL**: the stacked encoders ``W_img (J, p, d_I)``, ``W_txt (J, p, d_T)`` minimise the sum of
  the jobs' losses with one Adam. Adam is elementwise and the jobs share no parameters, so each
  job's trajectory is the one it would follow alone. The linear loss depends on the data only
  through ``X_I^T X_T``, ``sum_i x_I,i`` and ``sum_i x_T,i``, so each step costs O(J p d^2)
  instead of O(J n p d) (same loss, up to float rounding).
* **SL**: the regularised logistic (binary) or softmax (K > 2) objective is strictly convex in the
  weights, so its minimiser is unique; batched Newton iterations (solves on the
  stacked Hessians by Cholesky, float64) reach it to machine precision. The one-job trainer reaches the same
  minimiser by L-BFGS.

Data and initial weights are drawn exactly as :func:`mmclshift.experiments.synthetic.run_experiment`
draws them, from each job's own generators, so per-job results agree with one-at-a-time training
to float tolerance (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmclshift.models.linear import LinearClassifier, LinearEncoders
from mmclshift.train.optim import make_optimizer


def batchable(cfg) -> bool:
    """Whether a synthetic job can go through the batched trainer."""
    m, s = cfg.mmcl, cfg.sl
    return (m.loss == "linear" and m.solver == "gd" and m.optim.optimizer == "adam"
            and m.optim.batch_size == 0 and s.solver == "gd" and s.optim.batch_size == 0)


def batch_key(cfg) -> tuple:
    """Jobs with equal keys have equal tensor shapes and optimiser schedules."""
    d = cfg.data.input
    return (cfg.kind, cfg.device, cfg.dtype, cfg.n_train, d.d_image, d.d_text, cfg.mmcl.embed_dim,
            cfg.mmcl.optim.steps, cfg.mmcl.optim.lr)


@dataclass
class MMCLBatch:
    """Sufficient statistics of J jobs' training pairs for the linear loss."""

    cross: torch.Tensor  # (J, d_I, d_T) sum_i x_I,i x_T,i^T
    sum_img: torch.Tensor  # (J, d_I)
    sum_txt: torch.Tensor  # (J, d_T)
    n: int


def mmcl_statistics(x_img: torch.Tensor, x_txt: torch.Tensor) -> MMCLBatch:
    """From stacked data (J, n, d_I), (J, n, d_T)."""
    return MMCLBatch(x_img.transpose(1, 2) @ x_txt, x_img.sum(1), x_txt.sum(1), x_img.shape[1])


def batched_linear_mmcl_loss(W_img: torch.Tensor, W_txt: torch.Tensor, stats: MMCLBatch,
                             rho: torch.Tensor) -> torch.Tensor:
    """Per-job linear MMCL loss (J,), equal to :func:`mmclshift.losses.linear_mmcl_loss`.

    diag = tr(W_I C W_T^T) / n with C = sum_i x_i t_i^T; total = (W_I s_I).(W_T s_T).
    """
    n = stats.n
    diag = ((W_img @ stats.cross) * W_txt).sum((1, 2))  # tr(W_I C W_T^T)
    total = ((W_img @ stats.sum_img[:, :, None]).squeeze(-1) * (W_txt @ stats.sum_txt[:, :, None]).squeeze(-1)).sum(1)
    off = (total - diag) / (n * (n - 1))
    reg = 0.5 * rho * ((W_img @ W_img.transpose(1, 2)) * (W_txt @ W_txt.transpose(1, 2))).sum((1, 2))
    return off - diag / n + reg


def train_mmcl_batched(stats: MMCLBatch, W_img0: torch.Tensor, W_txt0: torch.Tensor,
                       rho: torch.Tensor, lr: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch Adam on the sum of the jobs' losses (each job's own Adam trajectory)."""
    W_img = W_img0.clone().requires_grad_(True)
    W_txt = W_txt0.clone().requires_grad_(True)
    opt = make_optimizer([W_img, W_txt], "adam", lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        batched_linear_mmcl_loss(W_img, W_txt, stats, rho).sum().backward()
        opt.step()
    return W_img.detach(), W_txt.detach()


def train_sl_batched(x: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     weight_decay: torch.Tensor, *, bias: bool = True, iters: int = 50,
                     tol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method on J regularised logistic / softmax objectives at once (float64).

    ``x`` (J, n, d), ``labels`` (J, n). Returns (weights, biases) in :class:`LinearClassifier`'s
    layout: binary -> (J, 1, d), (J, 1); K classes -> (J, K, d), (J, K).
    """
    X = x.double()
    J, n, d = X.shape
    if bias:
        X = torch.cat([X, torch.ones(J, n, 1, dtype=X.dtype, device=X.device)], 2)
    q = X.shape[2]
    lam = weight_decay.double().view(J, 1)
    pen = torch.ones(q, dtype=X.dtype, device=X.device)
    if bias:
        pen[-1] = 0.0
    K = 1 if num_classes == 2 else num_classes
    theta = torch.zeros(J, K * q, dtype=X.dtype, device=X.device)
    Y = torch.nn.functional.one_hot(labels, num_classes).double()  # (J, n, C)
    # tiny damping on unpenalised directions (bias; softmax's shift invariance) keeps H invertible
    damp = (1e-10 * (1 - pen)).repeat(K)
    for _ in range(iters):
        Th = theta.view(J, K, q)
        logits = X @ Th.transpose(1, 2)  # (J, n, K)
        if K == 1:
            p = torch.sigmoid(logits)  # (J, n, 1)
            resid = p - Y[:, :, 1:]
            w = (p * (1 - p)).squeeze(-1)
            H = (X.transpose(1, 2) * w[:, None, :]) @ X / n
        else:
            p = torch.softmax(logits, -1)
            resid = p - Y
            # H[(k,a),(l,b)] = 1/n sum_i x_ia x_ib p_ik (delta_kl - p_il)
            H = X.new_zeros(J, K, q, K, q)
            Xt = X.transpose(1, 2)
            for k in range(K):
                for m in range(k, K):
                    w = p[..., k] * ((1.0 if k == m else 0.0) - p[..., m])  # (J, n)
                    block = (Xt * w[:, None, :]) @ X / n
                    H[:, k, :, m, :] = block
                    H[:, m, :, k, :] = block.transpose(1, 2)
            H = H.reshape(J, K * q, K * q)
        grad = (resid.transpose(1, 2) @ X / n).reshape(J, K * q) + lam * (Th * pen).reshape(J, K * q)
        H = H + torch.diag_embed(lam * pen.repeat(K) + damp)
        # H is symmetric positive definite (convex loss + ridge + damping): Cholesky solve.
        # (Batched LU, torch.linalg.solve, hangs in MKL's DLASWP with torch.set_num_threads(2)
        # on torch 2.14 CPU builds.)
        step = torch.cholesky_solve(grad.unsqueeze(-1), torch.linalg.cholesky(H)).squeeze(-1)
        theta = theta - step
        if float(step.abs().max()) < tol:
            break
    Th = theta.view(J, K, q)
    W = Th[:, :, :d]
    b = Th[:, :, d] if bias else torch.zeros(J, K, dtype=X.dtype, device=X.device)
    return W.to(x.dtype), b.to(x.dtype)


def encoders_from(W_img: torch.Tensor, W_txt: torch.Tensor) -> LinearEncoders:
    model = LinearEncoders(W_img.shape[1], W_txt.shape[1], W_img.shape[0], init_scale=0.0,
                           dtype=W_img.dtype)
    with torch.no_grad():
        model.W_img.copy_(W_img)
        model.W_txt.copy_(W_txt)
    return model.to(W_img.device)


def classifier_from(W: torch.Tensor, b: torch.Tensor, num_classes: int, bias: bool) -> LinearClassifier:
    model = LinearClassifier(W.shape[1], num_classes, bias=bias, dtype=W.dtype).to(W.device)
    with torch.no_grad():
        model.linear.weight.copy_(W)
        if bias:
            model.linear.bias.copy_(b)
    return model
