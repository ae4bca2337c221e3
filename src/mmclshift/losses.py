"""Training losses.

* :func:`linear_mmcl_loss`: the linear contrastive loss the paper analyses (Section 3; the loss of
  Nakada et al. 2023), ``1/(n(n-1)) sum_{i!=j} s_ij - 1/n sum_i s_ii + rho/2 ||W_I^T W_T||_F^2``.
* :func:`clip_loss`: CLIP's symmetric InfoNCE, computed by ``open_clip.loss.ClipLoss``.
* :func:`logistic_loss` / :func:`cross_entropy_loss`: the SL baseline's losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_mmcl_similarity_terms(z_img: torch.Tensor, z_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean off-diagonal similarity, mean diagonal similarity) of the n x n matrix z_img z_txt^T.

    Computed in O(n p) without forming the matrix: sum_{i!=j} s_ij = (sum_i z_i).(sum_j t_j) - sum_i s_ii.
    """
    n = z_img.shape[0]
    if n < 2:
        raise ValueError("the contrastive loss needs a batch of at least 2 pairs")
    diag = (z_img * z_txt).sum()
    total = z_img.sum(0) @ z_txt.sum(0)
    return (total - diag) / (n * (n - 1)), diag / n


def linear_mmcl_loss(z_img: torch.Tensor, z_txt: torch.Tensor, W_img: torch.Tensor,
                     W_txt: torch.Tensor, rho: float) -> torch.Tensor:
    """The paper's linear MMCL loss for embeddings ``z = x W^T`` of a batch of n pairs.

    ``W_img`` is (p, d_I) and ``W_txt`` is (p, d_T); the regulariser is
    ``rho/2 ||W_img^T W_txt||_F^2 = rho/2 tr((W_img W_img^T)(W_txt W_txt^T))`` (computed in p x p).
    """
    off, diag = linear_mmcl_similarity_terms(z_img, z_txt)
    reg = 0.5 * rho * ((W_img @ W_img.T) * (W_txt @ W_txt.T)).sum()
    return off - diag + reg


_CLIP_LOSS = None


def _open_clip_loss():
    """open_clip's ClipLoss, imported on first use (importing open_clip takes seconds)."""
    global _CLIP_LOSS
    if _CLIP_LOSS is None:
        from open_clip.loss import ClipLoss

        _CLIP_LOSS = ClipLoss()
    return _CLIP_LOSS


def clip_loss(z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor,
              *, normalize: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (``open_clip``'s ``ClipLoss``), logits = scale * cos similarity."""
    if normalize:
        z_img = F.normalize(z_img, dim=-1)
        z_txt = F.normalize(z_txt, dim=-1)
    return _open_clip_loss()(z_img, z_txt, logit_scale)


def logistic_loss(scores: torch.Tensor, y_pm: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss log(1 + exp(-y f(x))) for labels in {-1, +1}."""
    return F.softplus(-y_pm * scores).mean()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)
