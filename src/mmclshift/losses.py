"""Training losses, every one the trainers use.

Linear and semi-synthetic tiers:

* :func:`linear_mmcl_loss`: the linear contrastive loss the paper analyses (Section 3; the loss of
  Nakada et al. 2023), ``1/(n(n-1)) sum_{i!=j} s_ij - 1/n sum_i s_ii + rho/2 ||W_I^T W_T||_F^2``
  (its two similarity terms: :func:`linear_mmcl_similarity_terms`).
* :func:`clip_loss`: CLIP's symmetric InfoNCE, computed by ``open_clip.loss.ClipLoss``.
* :func:`logistic_loss` / :func:`cross_entropy_loss`: the SL baseline's losses.

Real-data tier (and the intra-class ablation of the semi-synthetic tier), each over all ranks'
features when trained on several:

* :func:`clip_loss_distributed`: :func:`clip_loss` of the global batch.
* :func:`intra_class_ablation_loss`: CLIP's loss without the same-class in-batch negatives
  (Figure 3c; the mask is :func:`same_class_negative_mask`).
* :func:`siglip_loss`: SigLIP's pairwise sigmoid loss.
* :func:`supcon_loss`: the supervised contrastive loss (Khosla et al. 2020).

The trainers choose among them once per run through their method registries
(``train.images.IMAGE_METHODS``, ``train.linear.LINEAR_MMCL_LOSSES``, ``train.clip.REAL_LOSSES``).
"""

from __future__ import annotations

import functools

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


# --------------------------------------------------------------------------- real-data tier losses
#
# The losses below are used by the image-caption trainer (Figure 3 of the paper). Each one takes
# the *local* batch's features and, when ``world_size > 1``, gathers every rank's features with
# gradients (``open_clip.loss.gather_features(gather_with_grad=True)``) so that the loss is the
# one of the global batch, exactly as ``ClipLoss(local_loss=False, gather_with_grad=True)`` does.


@functools.cache
def _open_clip_module(name: str, rank: int, world_size: int) -> torch.nn.Module:
    """open_clip's ``ClipLoss`` (global batch, gathered with gradients) or ``SigLipLoss`` for one
    (rank, world size), built once per process instead of once per step."""
    from open_clip import loss as open_clip_loss

    if name == "ClipLoss":
        return open_clip_loss.ClipLoss(local_loss=False, gather_with_grad=True, rank=rank,
                                       world_size=world_size)
    return open_clip_loss.SigLipLoss(rank=rank, world_size=world_size)


def _gather(
    z_img: torch.Tensor, z_txt: torch.Tensor, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if world_size <= 1:
        return z_img, z_txt
    from open_clip.loss import gather_features

    return gather_features(z_img, z_txt, local_loss=False, gather_with_grad=True,
                           rank=rank, world_size=world_size)


def _gather_labels(labels: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size <= 1:
        return labels
    import torch.distributed as dist

    out = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(out, labels.contiguous())
    return torch.cat(out)


def same_class_negative_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (n, n) mask of the in-batch negatives that share the anchor's class.

    ``mask[i, j]`` is True when ``j != i`` and ``labels[i] == labels[j] >= 0``. A negative label
    means "no class" and is treated as a class of its own (never masked).
    """
    labels = labels.reshape(-1)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    same.fill_diagonal_(False)
    return same


def intra_class_ablation_loss(z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor,
                              labels: torch.Tensor, *, normalize: bool = True, rank: int = 0,
                              world_size: int = 1) -> torch.Tensor:
    """CLIP's symmetric InfoNCE with the same-class in-batch negatives removed (Figure 3c).

    For anchor image ``i`` the softmax runs over its own caption and the captions of samples of a
    *different* class (and symmetrically for captions), so the model no longer contrasts within a
    class. When every sample has a distinct class this is exactly :func:`clip_loss`.
    ``labels`` are the local batch's class ids (negative = no class).
    """
    if normalize:
        z_img = F.normalize(z_img, dim=-1)
        z_txt = F.normalize(z_txt, dim=-1)
    all_img, all_txt = _gather(z_img, z_txt, rank, world_size)
    all_labels = _gather_labels(labels, world_size)
    logits = logit_scale * all_img @ all_txt.T
    mask = same_class_negative_mask(all_labels)
    logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def clip_loss_distributed(z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor,
                          *, normalize: bool = True, rank: int = 0,
                          world_size: int = 1) -> torch.Tensor:
    """:func:`clip_loss` over all ranks' features (``ClipLoss`` with ``gather_with_grad``)."""
    if normalize:
        z_img = F.normalize(z_img, dim=-1)
        z_txt = F.normalize(z_txt, dim=-1)
    return _open_clip_module("ClipLoss", rank, world_size)(z_img, z_txt, logit_scale)


def siglip_loss(z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, *, normalize: bool = True, rank: int = 0,
                world_size: int = 1) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (``open_clip.loss.SigLipLoss``; exchanges features over ranks)."""
    if normalize:
        z_img = F.normalize(z_img, dim=-1)
        z_txt = F.normalize(z_txt, dim=-1)
    return _open_clip_module("SigLipLoss", rank, world_size)(z_img, z_txt, logit_scale, logit_bias)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, *,
                normalize: bool = True, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) with one view per sample.

    ``-1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(z_i . z_a / tau)[p]`` averaged over the anchors
    that have at least one positive (another sample of the same class); samples with a negative
    label (no class) are neither anchors nor positives. Over ranks, features are gathered with
    gradients. Returns 0 (with a gradient path) when no anchor has a positive.
    """
    if normalize:
        z = F.normalize(z, dim=-1)
    if world_size > 1:
        z, _ = _gather(z, z, rank, world_size)
        labels = _gather_labels(labels, world_size)
    labels = labels.reshape(-1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & ~eye
    n_pos = pos.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(pos_log_prob[anchors] / n_pos[anchors]).mean()
