"""OpenCLIP models for the real-data tier (Section 6): CLIP for MMCL and the same image tower + a
linear head for SL, all created offline (``pretrained=None``).

Architectures are OpenCLIP JSON configs: ``RN50`` (ResNet-50 image tower + OpenCLIP's text
transformer) is the paper-scale default; ``mmcl-tiny`` (a 2-layer ViT on 32 px images and a
2-layer text transformer, shipped in ``models/configs/``) is for tests and CPU smoke runs. Any
other name OpenCLIP knows, or a user JSON registered with ``open_clip.add_model_config``, works.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import open_clip
import torch
from torch import nn

from mmclshift.errors import UserError

_REGISTERED = False


def register_model_configs() -> None:
    """Make the package's JSON configs (``mmcl-tiny``) known to OpenCLIP."""
    global _REGISTERED
    if not _REGISTERED:
        open_clip.add_model_config(str(resources.files("mmclshift.models").joinpath("configs")))
        _REGISTERED = True


def create_clip(name: str, *, siglip: bool = False, image_size: int | None = None
                ) -> tuple[nn.Module, Any, Any]:
    """(model, eval preprocessing, tokenizer) of an OpenCLIP architecture, randomly initialised.

    ``siglip`` adds SigLIP's learnable logit bias (init -10) and logit scale (init log 10).
    Preprocessing is OpenCLIP's deterministic eval transform (resize, centre crop, normalise).
    """
    register_model_configs()
    if name not in open_clip.list_models():
        raise UserError(f"model.name: unknown OpenCLIP architecture {name!r} "
                        "(e.g. RN50, ViT-B-32, mmcl-tiny)")
    kwargs: dict[str, Any] = {}
    if siglip:
        kwargs.update(init_logit_bias=-10.0, init_logit_scale=math.log(10.0))
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=None, force_image_size=image_size, output_dict=True, **kwargs)
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


class SLModel(nn.Module):
    """The SL baseline: CLIP's image tower followed by a linear classifier over the vocabulary."""

    def __init__(self, visual: nn.Module, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, n_classes)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.visual(images)
        return feats, self.head(feats)


def create_sl(name: str, n_classes: int, *, image_size: int | None = None
              ) -> tuple[SLModel, Any]:
    """(SL model, eval preprocessing): the image tower of ``name`` + a linear head."""
    clip, preprocess, _ = create_clip(name, image_size=image_size)
    embed_dim = clip.text_projection.shape[1] if hasattr(clip, "text_projection") and \
        clip.text_projection is not None else clip.visual.output_dim
    return SLModel(clip.visual, int(embed_dim), n_classes), preprocess
