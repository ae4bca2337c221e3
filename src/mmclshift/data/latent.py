"""Latent feature distributions as finite mixtures of Gaussians.

Both synthetic data models of the paper (Definitions 4.1 and 4.6) put, on each group of
(label, spurious attribute, ...), a Gaussian (possibly degenerate) distribution over the latent
feature vector ``mu`` in R^m. A :class:`LatentMixture` holds those components; everything the
theory needs (moments, cross-covariances, exact accuracies of linear rules) and the sampler both
read from the same object, so the two can never disagree about the data model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Component:
    """One mixture component: ``mu ~ N(mean, cov)`` with probability ``weight`` and class ``label``."""

    weight: float
    label: int
    mean: np.ndarray
    cov: np.ndarray
    name: str = ""


class LatentMixture:
    """A mixture of Gaussians over latent features, each component carrying a class label."""

    def __init__(self, components: Sequence[Component], feature_names: Sequence[str],
                 num_classes: int) -> None:
        comps = [c for c in components if c.weight > 0]
        if not comps:
            raise ValueError("a latent mixture needs at least one component of positive weight")
        total = sum(c.weight for c in comps)
        if not np.isclose(total, 1.0, atol=1e-9):
            raise ValueError(f"component weights sum to {total}, not 1")
        self.components = list(comps)
        self.feature_names = list(feature_names)
        self.num_classes = int(num_classes)
        m = len(self.feature_names)
        for c in self.components:
            if c.mean.shape != (m,) or c.cov.shape != (m, m):
                raise ValueError(f"component {c.name!r} has the wrong shape for {m} features")
        self.weights = np.array([c.weight for c in self.components], dtype=np.float64)
        self.labels = np.array([c.label for c in self.components], dtype=np.int64)
        self.means = np.stack([c.mean for c in self.components]).astype(np.float64)
        self.covs = np.stack([c.cov for c in self.components]).astype(np.float64)
        self._factors = np.stack([_psd_factor(c) for c in self.covs])

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    # ------------------------------------------------------------------ moments
    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    def second_moment(self) -> np.ndarray:
        outer = np.einsum("ci,cj->cij", self.means, self.means)
        return np.einsum("c,cij->ij", self.weights, self.covs + outer)

    def covariance(self) -> np.ndarray:
        mu = self.mean()
        return self.second_moment() - np.outer(mu, mu)

    def class_priors(self) -> np.ndarray:
        return np.bincount(self.labels, weights=self.weights, minlength=self.num_classes)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples. Returns ``(mu (n, m), labels (n,), component index (n,))``.

        All randomness comes from ``generator`` (a CPU generator), so a seed fixes the draw on
        any device; tensors are moved to ``device`` afterwards.
        """
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        means = torch.as_tensor(self.means)[comp]
        factors = torch.as_tensor(self._factors)[comp]
        mu = means + torch.einsum("nij,nj->ni", factors, z)
        labels = torch.as_tensor(self.labels)[comp]
        return mu.to(device=device, dtype=dtype), labels.to(device), comp.to(device)


def _psd_factor(cov: np.ndarray) -> np.ndarray:
    """A matrix L with L L^T = cov, for positive semi-definite (possibly singular) cov."""
    cov = 0.5 * (cov + cov.T)
    vals, vecs = np.linalg.eigh(cov)
    if vals.min() < -1e-9 * max(1.0, abs(vals).max()):
        raise ValueError("component covariance is not positive semi-definite")
    return vecs * np.sqrt(np.clip(vals, 0.0, None))
