"""Trainers for the linear models of the theory tier: MMCL encoders and the SL classifier.

* :func:`train_mmcl` -- linear image and text encoders trained with the paper's linear contrastive
  loss (:func:`mmclshift.losses.linear_mmcl_loss`) or CLIP's InfoNCE, by gradient descent
  (full batch or minibatch), or solved in closed form (``W_I^T W_T = SVD_p(S)/rho``).
* :func:`train_sl` -- a linear classifier on images with the logistic / cross-entropy loss and
  weight decay (gradient descent or L-BFGS), or the max-margin / minimum-norm interpolators.

Both run on CPU or GPU; all randomness comes from the generator passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import optimize
from tqdm.auto import tqdm

from mmclshift.config import ConfigError, nonnegative, param, positive
from mmclshift.losses import clip_loss, cross_entropy_loss, linear_mmcl_loss, logistic_loss
from mmclshift.models.linear import LinearClassifier, LinearEncoders
from mmclshift.train.optim import check_finite_loss, make_optimizer

Logger = Callable[[dict], None]


@dataclass
class OptimConfig:
    """Gradient-based optimisation."""

    optimizer: Literal["sgd", "adam", "lbfgs"] = param("adam", help="sgd, adam, or lbfgs (full batch)")
    lr: float = param(0.05, help="learning rate", check=positive)
    steps: int = param(500, help="optimisation steps", check=positive)
    batch_size: int = param(0, help="minibatch size; 0 = full batch", check=nonnegative)
    log_every: int = param(100, help="log the training loss every this many steps", check=positive)


@dataclass
class MMCLConfig:
    """Linear MMCL (Section 3)."""

    loss: Literal["linear", "infonce"] = param("linear", help="the paper's linear loss, or CLIP's InfoNCE")
    solver: Literal["gd", "closed_form"] = param("gd", help="gradient descent, or SVD_p(S)/rho (linear loss only)")
    embed_dim: int = param(1, help="embedding dimension p", check=positive)
    rho: float = param(1.0, help="regulariser rho of the linear loss", check=positive)
    temperature: float = param(0.07, help="initial InfoNCE temperature", check=positive)
    learn_temperature: bool = param(True, help="learn the InfoNCE temperature (CLIP)")
    normalize: bool = param(True, help="L2-normalise embeddings in InfoNCE (CLIP)")
    init_scale: float = param(0.01, help="std of the random initial weights", check=positive)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        if self.solver == "closed_form" and self.loss != "linear":
            raise ConfigError("config key 'solver': closed_form needs loss: linear")


@dataclass
class SLConfig:
    """The SL baseline: a linear classifier on images trained on labels."""

    solver: Literal["gd", "max_margin", "min_norm"] = param(
        "gd", help="gd: logistic/CE loss + weight decay; max_margin: hard-margin SVM (binary); "
                   "min_norm: minimum-norm least-squares interpolator (binary)"
    )
    weight_decay: float = param(1e-4, help="L2 penalty lambda/2 ||w||^2 of the gd solver", check=nonnegative)
    bias: bool = param(True, help="learn an intercept")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="lbfgs", lr=1.0, steps=300))


# --------------------------------------------------------------------------- helpers


def _batches(n: int, cfg: OptimConfig, generator: torch.Generator, device: torch.device):
    """Yield index tensors (or None for the full batch) for each step."""
    if cfg.batch_size == 0 or cfg.batch_size >= n:
        while True:
            yield None
    perm = torch.randperm(n, generator=generator)
    pos = 0
    while True:
        if pos + cfg.batch_size > n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        yield perm[pos : pos + cfg.batch_size].to(device)
        pos += cfg.batch_size


def _run_steps(closure_for: Callable[[torch.Tensor | None], torch.Tensor], params: list[torch.Tensor],
               n: int, cfg: OptimConfig, generator: torch.Generator, device: torch.device,
               desc: str, progress: bool, log: Logger | None) -> float:
    if cfg.optimizer == "lbfgs" and cfg.batch_size not in (0,) and cfg.batch_size < n:
        raise ConfigError("config key 'optim.optimizer': lbfgs needs full-batch training (batch_size: 0)")
    opt = make_optimizer(params, cfg.optimizer, cfg.lr)
    batches = _batches(n, cfg, generator, device)
    loss_value = float("nan")
    bar = tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, leave=False, unit="step")
    for step in bar:
        idx = next(batches)

        def closure(idx: torch.Tensor | None = idx) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = closure_for(idx)
            loss.backward()
            return loss

        loss = opt.step(closure)
        loss_value = float(loss.detach())
        check_finite_loss(loss_value, desc, step, lr_key="optim.lr")
        if step % cfg.log_every == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{loss_value:.5f}")
            if log is not None:
                log({"event": "train", "method": desc, "step": step, "loss": loss_value})
    return loss_value


# --------------------------------------------------------------------------- MMCL


def cross_covariance_matrix(x_img: torch.Tensor, x_txt: torch.Tensor) -> torch.Tensor:
    """S = 1/n sum_i x_i t_i^T - 1/(n(n-1)) sum_{i!=j} x_i t_j^T (equals the unbiased cross-covariance)."""
    n = x_img.shape[0]
    xc = x_img - x_img.mean(0)
    tc = x_txt - x_txt.mean(0)
    return xc.T @ tc / (n - 1)


def mmcl_closed_form(x_img: torch.Tensor, x_txt: torch.Tensor, embed_dim: int, rho: float) -> LinearEncoders:
    """The exact minimiser of the linear MMCL loss on a data set: W_I^T W_T = SVD_p(S)/rho."""
    S = cross_covariance_matrix(x_img.double(), x_txt.double())
    model = LinearEncoders.from_product(S / rho, embed_dim)
    return model.to(device=x_img.device, dtype=x_img.dtype)


# The linear MMCL objectives: (encoders, image embeddings, text embeddings, cfg) -> loss
LINEAR_MMCL_LOSSES: dict[str, Callable[[LinearEncoders, torch.Tensor, torch.Tensor, MMCLConfig], torch.Tensor]] = {
    "linear": lambda model, zi, zt, cfg: linear_mmcl_loss(zi, zt, model.W_img, model.W_txt, cfg.rho),
    "infonce": lambda model, zi, zt, cfg: clip_loss(zi, zt, model.logit_scale.exp().clamp(max=100.0),
                                                    normalize=cfg.normalize),
}


def train_mmcl(x_img: torch.Tensor, x_txt: torch.Tensor, cfg: MMCLConfig, generator: torch.Generator,
               *, progress: bool = False, log: Logger | None = None) -> LinearEncoders:
    """Train linear MMCL encoders on paired inputs (n, d_I) and (n, d_T)."""
    if cfg.solver == "closed_form":
        return mmcl_closed_form(x_img, x_txt, cfg.embed_dim, cfg.rho)
    device = x_img.device
    model = LinearEncoders(
        x_img.shape[1], x_txt.shape[1], cfg.embed_dim, init_scale=cfg.init_scale,
        learn_logit_scale=cfg.loss == "infonce" and cfg.learn_temperature,
        init_temperature=cfg.temperature, generator=generator, dtype=x_img.dtype,
    ).to(device)

    objective = LINEAR_MMCL_LOSSES[cfg.loss]

    def loss_for(idx: torch.Tensor | None) -> torch.Tensor:
        xi = x_img if idx is None else x_img[idx]
        xt = x_txt if idx is None else x_txt[idx]
        return objective(model, model.encode_image(xi), model.encode_text(xt), cfg)

    params = [p for p in model.parameters() if p.requires_grad]
    _run_steps(loss_for, params, x_img.shape[0], cfg.optim, generator, device, "mmcl", progress, log)
    return model


# --------------------------------------------------------------------------- SL


def train_sl(x: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: SLConfig,
             generator: torch.Generator, *, progress: bool = False,
             log: Logger | None = None) -> LinearClassifier:
    """Train the SL baseline on images ``x`` (n, d) with class indices ``labels``."""
    device = x.device
    model = LinearClassifier(x.shape[1], num_classes, bias=cfg.bias, dtype=x.dtype).to(device)
    if cfg.solver != "gd":
        if num_classes != 2:
            raise ConfigError(f"config key 'sl.solver': {cfg.solver} supports binary tasks only")
        w, b = (_max_margin if cfg.solver == "max_margin" else _min_norm)(x.double(), labels, cfg.bias)
        with torch.no_grad():
            model.linear.weight.copy_(w[None, :].to(x.dtype))
            if cfg.bias:
                model.linear.bias.fill_(float(b))
        return model
    y_pm = (2.0 * labels - 1.0).to(x.dtype)

    def loss_for(idx: torch.Tensor | None) -> torch.Tensor:
        xb = x if idx is None else x[idx]
        out = model(xb)
        if num_classes == 2:
            yb = y_pm if idx is None else y_pm[idx]
            data = logistic_loss(out.squeeze(1), yb)
        else:
            data = cross_entropy_loss(out, labels if idx is None else labels[idx])
        return data + 0.5 * cfg.weight_decay * (model.linear.weight**2).sum()

    _run_steps(loss_for, list(model.parameters()), x.shape[0], cfg.optim, generator, device, "sl",
               progress, log)
    return model


def _min_norm(x: torch.Tensor, labels: torch.Tensor, bias: bool) -> tuple[torch.Tensor, float]:
    """Minimum-norm solution of X w + b = y (labels +-1): interpolates when n <= d."""
    y = 2.0 * labels.double() - 1.0
    X = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1) if bias else x
    sol = torch.linalg.pinv(X) @ y
    return (sol[:-1], float(sol[-1])) if bias else (sol, 0.0)


def _max_margin(x: torch.Tensor, labels: torch.Tensor, bias: bool) -> tuple[torch.Tensor, float]:
    """Hard-margin SVM: min ||w||^2 s.t. y_i (w.x_i + b) >= 1, solved in the dual (SLSQP / L-BFGS-B).

    The limit direction of gradient descent on the logistic loss for separable data (Soudry et al.),
    the classifier of Sagawa et al.'s Theorem 1 (the paper's Theorem 4.3).
    """
    y = (2.0 * labels.double() - 1.0).cpu().numpy()
    X = x.double().cpu().numpy()
    Q = (y[:, None] * X) @ (y[:, None] * X).T
    n = len(y)

    def neg_dual(a: np.ndarray) -> tuple[float, np.ndarray]:
        Qa = Q @ a
        return 0.5 * a @ Qa - a.sum(), Qa - 1.0

    if bias:
        res = optimize.minimize(neg_dual, np.zeros(n), jac=True, method="SLSQP",
                                bounds=[(0, None)] * n,
                                constraints=[{"type": "eq", "fun": lambda a: a @ y, "jac": lambda a: y}],
                                options={"maxiter": 1000, "ftol": 1e-12})
    else:
        res = optimize.minimize(neg_dual, np.zeros(n), jac=True, method="L-BFGS-B",
                                bounds=[(0, None)] * n, options={"maxiter": 5000, "gtol": 1e-10})
    a = res.x
    w = (a * y) @ X
    b = 0.0
    if bias:
        sv = a > 1e-6 * max(a.max(), 1e-12)
        if not sv.any():
            raise FloatingPointError("max-margin solver found no support vectors (data not separable?)")
        b = float(np.mean(y[sv] - X[sv] @ w))
    margins = y * (X @ w + b)
    if margins.min() < 1 - 1e-3:
        raise ConfigError(
            "config key 'sl.solver': max_margin needs linearly separable training data "
            f"(smallest margin {margins.min():.3g} < 1); use gd, or fewer samples than dimensions"
        )
    return torch.as_tensor(w, device=x.device), b
