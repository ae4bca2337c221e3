"""The optimisation settings of the real-data trainer (:func:`mmclshift.train.clip.train`).

Kept apart from the trainer so that it imports nothing heavy: the experiment config
(``experiments.real.TrainConfig`` and the ``workers``/``prefetch`` keys of its ``DataConfig``)
takes its defaults from these fields, so the config and a direct call of the trainer cannot
disagree on a default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSettings:
    """Optimisation settings of one method's training (``steps`` optimizer steps of
    ``accum_steps`` global micro-batches of ``batch_size``)."""

    steps: int
    batch_size: int
    accum_steps: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = None
    checkpoint_every: int = 500
    log_every: int = 10
    precision: str = "amp"  # bfloat16 autocast on GPU; fp32 on CPU either way
    supcon_temperature: float = 0.1
    workers: int = 2  # DataLoader processes decoding images (0: in the training process)
    prefetch: int = 2  # chunks decoded ahead per worker
