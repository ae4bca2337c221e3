"""Linear encoders (the paper's g_I(x) = W_I x, g_T(x) = W_T x) and the linear SL classifier."""

from __future__ import annotations

import math

import torch
from torch import nn


class LinearEncoders(nn.Module):
    """Two linear encoders into a shared p-dimensional embedding space."""

    def __init__(self, d_image: int, d_text: int, embed_dim: int, *, init_scale: float = 1e-2,
                 learn_logit_scale: bool = False, init_temperature: float = 0.07,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.W_img = nn.Parameter(
            init_scale * torch.randn(embed_dim, d_image, generator=generator, dtype=dtype)
        )
        self.W_txt = nn.Parameter(
            init_scale * torch.randn(embed_dim, d_text, generator=generator, dtype=dtype)
        )
        scale = torch.tensor(math.log(1.0 / init_temperature), dtype=dtype)
        if learn_logit_scale:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    @classmethod
    def from_product(cls, G: torch.Tensor, embed_dim: int) -> LinearEncoders:
        """Encoders with W_img^T W_txt equal to the rank-``embed_dim`` part of ``G`` (balanced)."""
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        k = min(embed_dim, S.numel())
        root = S[:k].sqrt()
        model = cls(G.shape[0], G.shape[1], embed_dim, init_scale=0.0, dtype=G.dtype)
        with torch.no_grad():
            model.W_img.zero_()
            model.W_txt.zero_()
            model.W_img[:k] = root[:, None] * U[:, :k].T
            model.W_txt[:k] = root[:, None] * Vh[:k]
        return model

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_img.T

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_txt.T

    def product(self) -> torch.Tensor:
        """W_img^T W_txt (d_I x d_T): the bilinear form behind every image-text similarity."""
        return self.W_img.T @ self.W_txt


class LinearClassifier(nn.Module):
    """Linear classifier on inputs: one score for binary tasks (labels +-1), K logits otherwise."""

    def __init__(self, d_in: int, num_classes: int, *, bias: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_classes = num_classes
        out = 1 if num_classes == 2 else num_classes
        self.linear = nn.Linear(d_in, out, bias=bias, dtype=dtype)
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(n, K) scores whose argmax is the predicted class."""
        out = self.linear(x)
        if self.num_classes == 2:
            return torch.cat([-0.5 * out, 0.5 * out], dim=1)
        return out

    def score_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, b) with class scores A x + b (K x d and K), equivalent to :meth:`class_scores`."""
        W = self.linear.weight.detach()
        b = self.linear.bias.detach() if self.linear.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype)
        if self.num_classes == 2:
            return torch.cat([-0.5 * W, 0.5 * W]), torch.cat([-0.5 * b, 0.5 * b])
        return W, b
