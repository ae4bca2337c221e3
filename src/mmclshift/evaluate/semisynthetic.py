"""Zero-shot classification of a two-tower model, and the SL model's predictions.

Zero-shot (the paper's evaluation of MMCL, Section 3): embed one prompt per class, embed the
image, predict the class whose prompt has the highest cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def zero_shot_head(model: nn.Module, prompts: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Normalised class embeddings (num_classes, p) from prompt tokens (num_classes, L)."""
    model.eval()
    return F.normalize(model.text(prompts.to(device)), dim=-1)


@torch.no_grad()
def predict_classes(encode: nn.Module, images: torch.Tensor, device: torch.device, *,
            head: torch.Tensor | None = None, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes for uint8 images (n, 3, H, W): argmax of ``encode(x)`` (SL logits), or of
    cosine similarity to ``head`` (zero-shot) when given."""
    encode.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i: i + batch_size].to(device).float().div_(255.0)
        z = encode(x)
        scores = F.normalize(z, dim=-1) @ head.T if head is not None else z
        out.append(scores.argmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
