"""Classification accuracy with its counts (the one helper every tier's evaluation uses)."""

from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """(accuracy, number correct, n) of predicted classes ``pred`` against ``labels``
    (NaN accuracy when n = 0). For class scores, pass ``scores.argmax(1)``."""
    n = int(labels.numel())
    correct = int((pred == labels.to(pred.device)).sum())
    return (correct / n if n else float("nan")), correct, n


__all__ = ["accuracy"]
