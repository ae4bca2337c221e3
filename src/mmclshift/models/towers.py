"""Image and text encoders for the semi-synthetic tier, and the two-tower MMCL model.

* Image towers (:func:`build_image_tower`): ``small_cnn`` (default; a 2-conv CNN for 28x28 RGB),
  ``torchvision:<name>`` (any ``torchvision.models`` classifier, untrained, its last layer sized to
  the feature width) or ``open_clip:<name>`` (the image tower of an ``open_clip`` model config,
  untrained; inputs are resized to its image size). No weights are ever downloaded.
* Text towers (:func:`build_text_tower`): ``bow`` (mean of word embeddings) or ``transformer``
  (a small transformer encoder with learned positions, mean-pooled over the caption's words).
* :class:`ImageEncoder` = tower + linear projection ``W_I`` into the shared embedding space; the
  same module is the SL model's encoder (followed by a linear head), so MMCL and SL share the
  architecture exactly. :class:`TwoTowerModel` adds the text side and CLIP's learnable
  temperature (``logit_scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmclshift.config import ConfigError, param, positive


@dataclass
class ModelConfig:
    """Encoder architectures (shared by MMCL and SL)."""

    image_encoder: str = param("small_cnn", help="small_cnn | torchvision:<name> | open_clip:<name>")
    image_size: int | None = param(None, help="resize inputs to this size (default: 28 for small_cnn, "
                                   "32 for torchvision; open_clip towers use their own size)", check=positive)
    cnn_width: int = param(16, help="channels of the small CNN's first conv (second is 2x)", check=positive)
    feature_dim: int = param(128, help="image tower output width", check=positive)
    embed_dim: int = param(64, help="shared embedding dimension p", check=positive)
    text_encoder: str = param("bow", help="bow | transformer")
    text_width: int = param(64, help="word-embedding width of the text tower", check=positive)
    text_layers: int = param(2, help="transformer layers (text_encoder=transformer)", check=positive)
    text_heads: int = param(4, help="transformer heads (text_encoder=transformer)", check=positive)

    def validate(self) -> None:
        ok = self.image_encoder == "small_cnn" or self.image_encoder.split(":", 1)[0] in (
            "torchvision", "open_clip")
        if not ok or (":" in self.image_encoder and not self.image_encoder.split(":", 1)[1]):
            raise ConfigError(f"config key 'image_encoder': must be small_cnn, torchvision:<name> or "
                              f"open_clip:<name>; got {self.image_encoder!r}")
        if self.text_encoder not in ("bow", "transformer"):
            raise ConfigError(f"config key 'text_encoder': must be bow or transformer; got {self.text_encoder!r}")
        if self.text_encoder == "transformer" and self.text_width % self.text_heads:
            raise ConfigError("config key 'text_heads': must divide text_width")


def conv3x3_pool_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2))`` in channels-last layout.

    * ReLU and max commute (both monotone), so ReLU runs after the pool on 4x fewer values; the
      gradient is the same too (zero where the pooled maximum is <= 0, else routed to the maximum).
    * Channels-last layout: on CPU its convolution and pooling kernels were measured 1.4-1.6x
      faster than NCHW's at these sizes (forward and backward of both layers, batch 128, 14x14).
      Convolving only the positions the floor pool reads (6x6 of 7x7) was measured slower: the
      crop's copy costs more than the saved multiply-adds.
    """
    return F.relu(F.max_pool2d(F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias,
                                        padding=1), 2))


class SmallCNN(nn.Module):
    """conv(3->w)-ReLU-pool, conv(w->2w)-ReLU-pool, flatten, linear -> ``out_dim`` (28x28 RGB in).

    The layers are ``features`` (conv, ReLU, pool, conv, ReLU, pool) and ``fc``; the forward pass
    computes exactly that composition through :func:`conv3x3_pool_relu`.
    """

    def __init__(self, out_dim: int, width: int = 16, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2 = self.features[0], self.features[3]
        h = conv3x3_pool_relu(conv3x3_pool_relu(x, c1.weight, c1.bias), c2.weight, c2.bias)
        return self.fc(h.contiguous())  # NCHW order for the flatten


class _Resized(nn.Module):
    def __init__(self, tower: nn.Module, size: int) -> None:
        super().__init__()
        self.tower, self.size = tower, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.tower(x)


def build_image_tower(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """(tower, output width) for ``cfg.image_encoder``; towers take (n, 3, 28, 28) in [0, 1]."""
    name = cfg.image_encoder
    if name == "small_cnn":
        size = cfg.image_size or 28
        tower: nn.Module = SmallCNN(cfg.feature_dim, cfg.cnn_width, size)
        return (tower if size == 28 else _Resized(tower, size)), cfg.feature_dim
    family, arch = name.split(":", 1)
    if family == "torchvision":
        import torchvision

        try:
            tower = torchvision.models.get_model(arch, weights=None, num_classes=cfg.feature_dim)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"config key 'model.image_encoder': unknown torchvision model {arch!r} ({exc})") from None
        size = cfg.image_size or 32
        return _Resized(tower, size), cfg.feature_dim
    import open_clip

    if arch not in open_clip.list_models():
        raise ConfigError(f"config key 'model.image_encoder': unknown open_clip model {arch!r}")
    visual = open_clip.create_model(arch, pretrained=None).visual
    size = _open_clip_size(visual)  # its positional embeddings fix the input size
    if cfg.image_size not in (None, size):
        raise ConfigError(f"config key 'model.image_size': open_clip:{arch} takes {size}x{size} "
                          f"inputs; leave image_size empty or set it to {size}")
    out = getattr(visual, "output_dim", None) or cfg.feature_dim
    return _Resized(visual, size), int(out)


def _open_clip_size(visual: nn.Module) -> int:
    s = getattr(visual, "image_size", 224)
    return int(s[0] if isinstance(s, tuple | list) else s)


class BagOfWords(nn.Module):
    """Mean of the word embeddings of a caption's non-pad tokens."""

    def __init__(self, vocab_size: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        return (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class SmallTransformer(nn.Module):
    """A small transformer encoder over the caption; mean-pooled over non-pad positions."""

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0
        h = self.encoder(self.embed(tokens) + self.pos[: tokens.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def build_text_tower(cfg: ModelConfig, vocab_size: int, max_len: int) -> nn.Module:
    if cfg.text_encoder == "bow":
        return BagOfWords(vocab_size, cfg.text_width)
    return SmallTransformer(vocab_size, cfg.text_width, cfg.text_layers, cfg.text_heads, max_len)


class ImageEncoder(nn.Module):
    """Image tower followed by the linear projection ``W_I`` (``proj``) to the embedding space."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tower, width = build_image_tower(cfg)
        self.proj = nn.Linear(width, cfg.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.tower(x))


class TextEncoder(nn.Module):
    """Text tower followed by the linear projection ``W_T`` (``proj``)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_len: int) -> None:
        super().__init__()
        self.tower = build_text_tower(cfg, vocab_size, max_len)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.tower(tokens))


class TwoTowerModel(nn.Module):
    """CLIP-style image and text encoders with a learnable temperature (``logit_scale = log 1/T``)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_len: int, *,
                 init_temperature: float = 0.07, learn_temperature: bool = True) -> None:
        super().__init__()
        self.image = ImageEncoder(cfg)
        self.text = TextEncoder(cfg, vocab_size, max_len)
        scale = torch.tensor(math.log(1.0 / init_temperature))
        if learn_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)


class SupervisedModel(nn.Module):
    """SL: the same image encoder as MMCL plus a linear head trained with cross-entropy."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.image = ImageEncoder(cfg)
        self.head = nn.Linear(cfg.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.image(x))
