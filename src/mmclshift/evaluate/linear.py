"""Evaluation of the linear models: zero-shot classification by prompts (MMCL), the SL head, and
the exact population accuracy of a trained model under a synthetic data model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmclshift.data.latent import LatentMixture
from mmclshift.models.linear import LinearClassifier, LinearEncoders
from mmclshift.theory.accuracy import linear_rule_accuracy


@dataclass
class InputRule:
    """Class scores A x + b for inputs x (A is K x d)."""

    A: torch.Tensor
    b: torch.Tensor

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T + self.b


def zero_shot_rule(model: LinearEncoders, prompt_inputs: torch.Tensor, *,
                   normalize_text: bool = False) -> InputRule:
    """Zero-shot classifier: class k scores g_I(x) . g_T(prompt_k) (optionally cosine on the text side;
    normalising the image embedding does not change the argmax)."""
    with torch.no_grad():
        t = model.encode_text(prompt_inputs)  # (K, p)
        if normalize_text:
            t = F.normalize(t, dim=-1)
        A = t @ model.W_img  # (K, d_I)
    return InputRule(A, torch.zeros(A.shape[0], dtype=A.dtype, device=A.device))


def classifier_rule(model: LinearClassifier) -> InputRule:
    A, b = model.score_matrix()
    return InputRule(A, b)


def population_accuracy(rule: InputRule, mixture: LatentMixture, D_image: torch.Tensor,
                        noise_var: float) -> float:
    """Exact accuracy of an input-space rule when x = D mu + xi, xi ~ N(0, noise_var I)."""
    A = rule.A.detach().double().cpu().numpy()
    D = D_image.detach().double().cpu().numpy()
    b = rule.b.detach().double().cpu().numpy()
    return linear_rule_accuracy(mixture, A @ D, b, noise_var, noise_A=A)


__all__ = ["InputRule", "classifier_rule", "population_accuracy", "zero_shot_rule"]
