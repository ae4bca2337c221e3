"""The shared optimiser factory, learning-rate schedule and accuracy helper."""

import math

import pytest
import torch

from mmclshift.evaluate.metrics import accuracy
from mmclshift.train.optim import make_optimizer, warmup_cosine


def test_warmup_cosine_hand_values():
    # warm-up 2 of 10 steps: 1/2, 2/2, then 0.5 (1 + cos(pi t)), t = (s - 2) / 8
    assert warmup_cosine(0, 10, 2) == 0.5
    assert warmup_cosine(1, 10, 2) == 1.0
    assert warmup_cosine(2, 10, 2) == 1.0
    assert warmup_cosine(6, 10, 2) == pytest.approx(0.5)
    assert warmup_cosine(4, 10, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert warmup_cosine(10, 10, 2) == pytest.approx(0.0)
    assert warmup_cosine(7, 10, 0, cosine=False) == 1.0


def test_make_optimizer_settings():
    p = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(p, "sgd", 0.1, momentum=0.9, weight_decay=0.01)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 0.01
    adamw = make_optimizer(p, "adamw", 1e-3, weight_decay=1e-4, betas=(0.9, 0.98), eps=1e-6)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.9, 0.98) and adamw.defaults["weight_decay"] == 1e-4
    assert isinstance(make_optimizer(p, "lbfgs", 1.0), torch.optim.LBFGS)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(p, "rmsprop", 1.0)


def test_make_optimizer_step_matches_torch():
    """One Adam step from the factory equals torch's Adam built directly."""
    a = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    for p, opt in ((a, make_optimizer([a], "adam", 0.1, weight_decay=0.01)),
                   (b, torch.optim.Adam([b], lr=0.1, weight_decay=0.01))):
        (p ** 2).sum().backward()
        opt.step()
    assert torch.equal(a, b)


def test_accuracy_counts():
    pred = torch.tensor([0, 1, 2, 1])
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy(pred, labels) == (0.75, 3, 4)
    acc, correct, n = accuracy(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert math.isnan(acc) and (correct, n) == (0, 0)
