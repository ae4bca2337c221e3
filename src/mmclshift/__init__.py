"""mmclshift: why multimodal contrastive learning is more robust to distribution shift than SL."""

__version__ = "0.1.0"
