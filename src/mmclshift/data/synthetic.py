"""The paper's synthetic data models (Section 3, Definitions 4.1 and 4.6, Definition 5.1).

Image-text pairs come from latent feature vectors (Section 3)::

    x_I = D_I mu_I + xi_I,      x_T = D_T mu_T + xi_T,
    xi_I ~ N(0, sigma_xi^2 / d_I  I),   xi_T ~ N(0, sigma_xi^2 / d_T  I),

with ``D_I`` (d_I x m) and ``D_T`` (d_T x m) of orthonormal columns. The caption carries the image's
features, each feature ``j`` written into it with probability ``pi_j`` and masked out otherwise
(feature masking, Definition 5.1): ``mu_T = M mu_I`` with ``M = diag(m_1..m_m)``,
``m_j ~ Bernoulli(pi_j)`` independent of everything else.

A data model defines, for the training distribution and each shifted test distribution, a
:class:`~mmclshift.data.latent.LatentMixture` over ``mu_I``; the per-feature annotation
probabilities; and the zero-shot prompts (the text features of each class's prompt). The theory
(:mod:`mmclshift.theory`) and the sampler below both read these objects.

Data Model 1 (intra-class contrasting) -- binary label y in {-1, +1} (class index (y+1)/2),
spurious attribute a in {-1, +1}::

    P(a = y) = p_spu (training / ID),   1/2 (OOD "ood"),   1 - p_spu (OOD "ood_reversed")
    mu = [z_core, z_spu, z_other_1..n],  z_core ~ N(core_mean * y, sigma_core^2),
    z_spu ~ N(spu_mean * a, sigma_spu^2),  z_other_j ~ N(0, sigma_other^2)

The core feature has a large within-class variance, the spurious feature a small one; the
label-independent details ``z_other`` (things captions mention besides the class: background,
lighting, ...) compete with them for the embedding's p dimensions. The prompt for class y carries
the core feature only: mu_prompt(y) = [core_mean * y, 0, 0...].

Data Model 2 (inter-class feature sharing) -- K classes described by L shared *details*; class k
has the details ``class_details[k]`` (a detail may belong to several classes). Each image of class
y shows each of its class's details independently with probability ``detail_prob`` (value
``detail_mean`` plus N(0, sigma_detail^2) noise; absent details are pure noise), and one of K
spurious features a (a background, say) with ``P(a = y) = p_spu`` in training (otherwise uniform
over the other classes), uniform over all K at OOD test::

    mu = [z_detail_1..z_detail_L, z_spu_1..z_spu_K]
    z_detail_l ~ N(detail_mean * present_l, sigma_detail^2),  z_spu_k ~ N(spu_mean * [k == a], sigma_spu^2)

The prompt for class k carries its details: mu_prompt(k) = detail_mean * sum_{l in details(k)} e_l.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from mmclshift.config import ConfigError, at_least, nonnegative, param, positive, probability
from mmclshift.data.latent import Component, LatentMixture

# --------------------------------------------------------------------------- configs


@dataclass
class InputSpace:
    """Feature-to-input maps and input noise (Section 3)."""

    d_image: int = param(64, help="image input dimension d_I", check=positive)
    d_text: int = param(64, help="text input dimension d_T", check=positive)
    sigma_xi: float = param(1.0, help="input noise scale: xi ~ N(0, sigma_xi^2/d I)", check=nonnegative)
    geometry_seed: int = param(
        0, help="seed of the random orthonormal maps D_I, D_T (fixed across data seeds)"
    )


@dataclass
class DataModel1Config:
    """Definition 4.1 parameters (plus feature masking, Definition 5.1)."""

    p_spu: float = param(0.95, help="P(a = y) in training (spurious correlation strength)", check=probability)
    core_mean: float = param(1.0, help="|E[z_core | y]|", check=positive)
    sigma_core: float = param(1.0, help="within-class std of the core feature", check=nonnegative)
    spu_mean: float = param(1.0, help="|E[z_spu | a]|", check=positive)
    sigma_spu: float = param(0.1, help="within-group std of the spurious feature", check=nonnegative)
    pi_core: float = param(1.0, help="P(core feature annotated in the caption)", check=probability)
    pi_spu: float = param(1.0, help="P(spurious feature annotated in the caption)", check=probability)
    class_balance: float = param(0.5, help="P(y = +1)", check=probability)
    n_other: int = param(1, help="number of label-independent caption details (background etc.)",
                         check=nonnegative)
    sigma_other: float = param(1.2, help="std of each label-independent detail", check=nonnegative)
    pi_other: float = param(1.0, help="P(a label-independent detail is annotated)", check=probability)
    input: InputSpace = field(default_factory=InputSpace)

    def validate(self) -> None:
        if not 0.0 < self.class_balance < 1.0:
            raise ConfigError("config key 'class_balance': must be in (0, 1)")


@dataclass
class DataModel2Config:
    """Definition 4.6 parameters (plus feature masking, Definition 5.1)."""

    num_classes: int = param(4, help="number of classes K", check=at_least(2))
    num_details: int = param(5, help="number of shared details L", check=positive)
    class_details: list[list[int]] = param(
        default_factory=lambda: [[0, 1], [1, 2], [2, 3], [3, 4]],
        help="for each class, the indices of its details (details may be shared between classes)",
    )
    sharing: float | None = param(
        None, help="if set, generate class_details (overriding it and num_details): each class has two "
        "details, and round(sharing * K) classes share their second detail with the next class "
        "(0: all private, 2K details; 1: a ring of K shared details)",
    )
    detail_prob: float = param(0.8, help="P(a class's detail is visible in an image of that class)", check=probability)
    detail_mean: float = param(1.0, help="magnitude of a visible detail", check=positive)
    sigma_detail: float = param(0.3, help="std of detail features", check=nonnegative)
    p_spu: float = param(0.95, help="P(spurious feature = the class's own) in training", check=probability)
    spu_mean: float = param(1.0, help="magnitude of the active spurious feature", check=positive)
    sigma_spu: float = param(0.05, help="std of spurious features", check=nonnegative)
    pi_core: float = param(1.0, help="P(a visible detail is annotated in the caption)", check=probability)
    pi_spu: float = param(1.0, help="P(the spurious feature is annotated in the caption)", check=probability)
    pi_shared: float | None = param(
        None, help="if set, P(a visible *shared* detail -- one of more than one class -- is annotated), "
        "instead of pi_core; the images, classes and prompts are unchanged (the sharing ablation)",
    )
    input: InputSpace = field(default_factory=InputSpace)

    def details(self) -> tuple[int, list[list[int]]]:
        """(number of details, each class's details): from ``sharing`` when set."""
        if self.sharing is None:
            return self.num_details, self.class_details
        K = self.num_classes
        shared = round(self.sharing * K)
        out, nxt = [], K
        for k in range(K):
            if k < shared:
                out.append([k, (k + 1) % K])
            else:
                out.append([k, nxt])
                nxt += 1
        return nxt, out

    def validate(self) -> None:
        if self.sharing is not None and not 0.0 <= self.sharing <= 1.0:
            raise ConfigError(f"config key 'sharing': must be in [0, 1] or null; got {self.sharing}")
        if self.sharing is not None and self.num_classes < 3:
            raise ConfigError("config key 'sharing': needs num_classes >= 3")
        if len(self.class_details) != self.num_classes:
            raise ConfigError(
                f"config key 'class_details': needs one list per class ({self.num_classes}), "
                f"got {len(self.class_details)}"
            )
        for k, details in enumerate(self.class_details):
            if not details:
                raise ConfigError(f"config key 'class_details[{k}]': a class needs at least one detail")
            bad = [j for j in details if not 0 <= j < self.num_details]
            if bad:
                raise ConfigError(
                    f"config key 'class_details[{k}]': detail index {bad[0]} outside [0, {self.num_details})"
                )
            if self.pi_shared is not None and not 0.0 <= self.pi_shared <= 1.0:
                raise ConfigError(f"config key 'pi_shared': must be in [0, 1] or null; got {self.pi_shared}")
            if len(set(details)) != len(details):
                raise ConfigError(f"config key 'class_details[{k}]': repeated detail index")
        patterns = {tuple(sorted(d)) for d in self.class_details}
        if len(patterns) != self.num_classes:
            raise ConfigError("config key 'class_details': two classes have the same details")


# --------------------------------------------------------------------------- data models

SPLITS = ("id", "ood", "ood_reversed")


class SyntheticDataModel:
    """What the sampler and the theory need to know about a data model."""

    name: str
    feature_names: list[str]
    num_classes: int
    core_features: list[int]
    spurious_features: list[int]
    splits: tuple[str, ...] = SPLITS
    input: InputSpace

    def mixture(self, split: str) -> LatentMixture:  # pragma: no cover - interface
        raise NotImplementedError

    def annotation_probs(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def prompts(self) -> np.ndarray:  # pragma: no cover - interface
        """(K, m) text features of each class's zero-shot prompt."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def _check_split(self, split: str) -> None:
        if split not in ("train", *self.splits):
            raise ValueError(f"unknown split {split!r} (known: train, {', '.join(self.splits)})")


class DataModel1(SyntheticDataModel):
    """Definition 4.1 (see the module docstring)."""

    name = "data_model_1"

    def __init__(self, cfg: DataModel1Config) -> None:
        self.cfg = cfg
        self.input = cfg.input
        self.feature_names = ["core", "spurious"] + [f"other_{j}" for j in range(cfg.n_other)]
        self.num_classes = 2
        self.core_features = [0]
        self.spurious_features = [1]

    def agreement(self, split: str) -> float:
        """P(a = y) on a split."""
        self._check_split(split)
        return {"train": self.cfg.p_spu, "id": self.cfg.p_spu, "ood": 0.5,
                "ood_reversed": 1.0 - self.cfg.p_spu}[split]

    def mixture(self, split: str) -> LatentMixture:
        c = self.cfg
        q = self.agreement(split)
        cov = np.diag([c.sigma_core**2, c.sigma_spu**2] + [c.sigma_other**2] * c.n_other)
        comps = []
        for y in (-1, 1):
            py = c.class_balance if y == 1 else 1.0 - c.class_balance
            for a, pa in ((y, q), (-y, 1.0 - q)):
                mean = np.zeros(self.dim)
                mean[0], mean[1] = c.core_mean * y, c.spu_mean * a
                comps.append(Component(py * pa, (y + 1) // 2, mean, cov, name=f"y={y:+d},a={a:+d}"))
        return LatentMixture(comps, self.feature_names, 2)

    def annotation_probs(self) -> np.ndarray:
        c = self.cfg
        return np.array([c.pi_core, c.pi_spu] + [c.pi_other] * c.n_other)

    def prompts(self) -> np.ndarray:
        P = np.zeros((2, self.dim))
        P[:, 0] = [-self.cfg.core_mean, self.cfg.core_mean]
        return P


class DataModel2(SyntheticDataModel):
    """Definition 4.6 (see the module docstring)."""

    name = "data_model_2"

    def __init__(self, cfg: DataModel2Config) -> None:
        self.cfg = cfg
        self.input = cfg.input
        self.num_details, self.class_details = cfg.details()
        K, L = cfg.num_classes, self.num_details
        self.feature_names = [f"detail_{j}" for j in range(L)] + [f"spurious_{k}" for k in range(K)]
        self.num_classes = K
        self.core_features = list(range(L))
        self.spurious_features = list(range(L, L + K))

    def spurious_distribution(self, split: str, y: int) -> np.ndarray:
        """P(a = k | y) for k = 0..K-1 on a split."""
        self._check_split(split)
        K = self.cfg.num_classes
        if split in ("train", "id"):
            probs = np.full(K, (1.0 - self.cfg.p_spu) / (K - 1))
            probs[y] = self.cfg.p_spu
        elif split == "ood":
            probs = np.full(K, 1.0 / K)
        else:  # ood_reversed: the spurious feature always belongs to another class
            probs = np.full(K, 1.0 / (K - 1))
            probs[y] = 0.0
        return probs

    def mixture(self, split: str) -> LatentMixture:
        c = self.cfg
        K, L = c.num_classes, self.num_details
        m = L + K
        cov = np.diag([c.sigma_detail**2] * L + [c.sigma_spu**2] * K)
        comps = []
        for y in range(K):
            details = self.class_details[y]
            spu = self.spurious_distribution(split, y)
            for present in itertools.product((0, 1), repeat=len(details)):
                k_on = sum(present)
                p_present = c.detail_prob**k_on * (1 - c.detail_prob) ** (len(details) - k_on)
                for a in range(K):
                    w = p_present * spu[a] / K
                    if w <= 0:
                        continue
                    mean = np.zeros(m)
                    for j, on in zip(details, present, strict=True):
                        mean[j] = c.detail_mean * on
                    mean[L + a] = c.spu_mean
                    comps.append(Component(w, y, mean, cov, name=f"y={y},a={a},details={present}"))
        return LatentMixture(comps, self.feature_names, K)

    def shared_details(self) -> list[int]:
        """The details that belong to more than one class."""
        counts = np.bincount([j for d in self.class_details for j in d], minlength=self.num_details)
        return [int(j) for j in np.flatnonzero(counts > 1)]

    def annotation_probs(self) -> np.ndarray:
        c = self.cfg
        details = np.full(self.num_details, c.pi_core)
        if c.pi_shared is not None:
            details[self.shared_details()] = c.pi_shared
        return np.concatenate([details, np.full(c.num_classes, c.pi_spu)])

    def prompts(self) -> np.ndarray:
        c = self.cfg
        P = np.zeros((c.num_classes, self.num_details + c.num_classes))
        for k, details in enumerate(self.class_details):
            P[k, details] = c.detail_mean
        return P


DATA_MODELS: dict[str, type[SyntheticDataModel]] = {
    "data_model_1": DataModel1,
    "data_model_2": DataModel2,
}


def build_data_model(kind: str, cfg: DataModel1Config | DataModel2Config) -> SyntheticDataModel:
    return DATA_MODELS[kind](cfg)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- analytic moments


def masked_second_moment(second: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """E[mu_T mu_T^T] for mu_T = M mu with independent Bernoulli(pi) masks: E[m_i m_j] E[mu_i mu_j]."""
    mask = np.outer(pi, pi)
    np.fill_diagonal(mask, pi)
    return mask * second


def joint_latent_covariance(model: SyntheticDataModel, split: str = "train") -> np.ndarray:
    """Covariance of the stacked latent [mu_I, mu_T] (2m x 2m) under feature masking."""
    mix = model.mixture(split)
    pi = model.annotation_probs()
    second = mix.second_moment()
    mean = mix.mean()
    mean_t = pi * mean
    cov_ii = second - np.outer(mean, mean)
    cov_it = second * pi[None, :] - np.outer(mean, mean_t)
    cov_tt = masked_second_moment(second, pi) - np.outer(mean_t, mean_t)
    return np.block([[cov_ii, cov_it], [cov_it.T, cov_tt]])


# --------------------------------------------------------------------------- sampler


@dataclass
class PairBatch:
    """A batch of image-text pairs with the latents that generated them."""

    x_image: torch.Tensor  # (n, d_I)
    x_text: torch.Tensor  # (n, d_T)
    labels: torch.Tensor  # (n,) class index
    mu_image: torch.Tensor  # (n, m)
    mu_text: torch.Tensor  # (n, m) masked features
    component: torch.Tensor  # (n,) mixture component index

    def __len__(self) -> int:
        return self.labels.shape[0]


def orthonormal_map(d: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """A d x m matrix with orthonormal columns (QR of a Gaussian matrix, signs fixed)."""
    if m > d:
        raise ConfigError(f"input dimension {d} is smaller than the number of latent features {m}")
    G = torch.randn(d, m, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    return Q * torch.sign(torch.diagonal(R))[None, :]


class Sampler:
    """Draws image-text pairs x_I = D_I mu_I + xi_I, x_T = D_T mu_T + xi_T (batched, any device).

    ``D_I`` and ``D_T`` are fixed by ``input.geometry_seed``; the data draws by the generator
    passed to :meth:`sample`, so one seed fixes a data set on CPU and GPU alike.
    """

    def __init__(self, model: SyntheticDataModel, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        inp = model.input
        g = torch.Generator().manual_seed(inp.geometry_seed)
        self.D_image = orthonormal_map(inp.d_image, model.dim, g).to(self.device, dtype)
        self.D_text = orthonormal_map(inp.d_text, model.dim, g).to(self.device, dtype)
        self._pi = torch.as_tensor(model.annotation_probs(), dtype=torch.float64)
        self._mixtures: dict[str, LatentMixture] = {}

    def mixture(self, split: str) -> LatentMixture:
        if split not in self._mixtures:
            self._mixtures[split] = self.model.mixture(split)
        return self._mixtures[split]

    def sample(self, split: str, n: int, generator: torch.Generator) -> PairBatch:
        inp = self.model.input
        mu, labels, comp = self.mixture(split).sample(n, generator, dtype=torch.float64)
        mask = (torch.rand(n, self.model.dim, generator=generator, dtype=torch.float64) < self._pi).to(mu.dtype)
        mu_t = mu * mask
        xi_i = torch.randn(n, inp.d_image, generator=generator, dtype=torch.float64)
        xi_t = torch.randn(n, inp.d_text, generator=generator, dtype=torch.float64)
        dev, dt = self.device, self.dtype
        mu_d, mu_t_d = mu.to(dev, dt), mu_t.to(dev, dt)
        x_i = mu_d @ self.D_image.T + (inp.sigma_xi / inp.d_image**0.5) * xi_i.to(dev, dt)
        x_t = mu_t_d @ self.D_text.T + (inp.sigma_xi / inp.d_text**0.5) * xi_t.to(dev, dt)
        return PairBatch(x_i, x_t, labels.to(dev), mu_d, mu_t_d, comp.to(dev))

    def prompt_inputs(self) -> torch.Tensor:
        """(K, d_T) noise-free text inputs of the zero-shot prompts: D_T mu_prompt(k)."""
        P = torch.as_tensor(self.model.prompts(), device=self.device, dtype=self.dtype)
        return P @ self.D_text.T
