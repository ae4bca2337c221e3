"""Losses of the real-data tier against OpenCLIP's implementations and hand-written loops."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from mmclshift import losses


def _feats(n=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return a, b, torch.tensor(math.log(1 / 0.07), dtype=torch.float64)


def test_clip_loss_equals_open_clip():
    a, b, s = _feats()
    ref = ClipLoss()(a, b, s)
    assert abs(float(losses.clip_loss_distributed(a, b, s)) - float(ref)) < 1e-6
    assert abs(float(losses.clip_loss(a, b, s)) - float(ref)) < 1e-6


def test_intra_class_ablation_equals_clip_when_classes_distinct():
    a, b, s = _feats()
    labels = torch.arange(12)
    ref = ClipLoss()(a, b, s)
    got = losses.intra_class_ablation_loss(a, b, s, labels)
    assert abs(float(got) - float(ref)) < 1e-6
    # "no class" (-1) labels are never masked either
    got2 = losses.intra_class_ablation_loss(a, b, s, torch.full((12,), -1))
    assert abs(float(got2) - float(ref)) < 1e-6


def test_intra_class_ablation_matches_hand_loop():
    a, b, s = _feats(n=6)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    logits = (s * a @ b.T).tolist()
    total = 0.0
    for i in range(6):  # image -> text
        keep = [j for j in range(6) if j == i or labels[j] != labels[i]]
        total += -(logits[i][i] - math.log(sum(math.exp(logits[i][j]) for j in keep)))
    for i in range(6):  # text -> image
        keep = [j for j in range(6) if j == i or labels[j] != labels[i]]
        total += -(logits[i][i] - math.log(sum(math.exp(logits[j][i]) for j in keep)))
    expected = total / 12
    got = float(losses.intra_class_ablation_loss(a, b, s, labels))
    assert abs(got - expected) < 1e-9
    assert abs(got - float(ClipLoss()(a, b, s))) > 1e-3  # the ablation changes the loss


def test_supcon_matches_hand_loop():
    a, _, _ = _feats(n=7)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, -1])
    tau = 0.2
    sim = (a @ a.T / tau).tolist()
    per_anchor = []
    for i in range(7):
        if labels[i] < 0:
            continue
        pos = [p for p in range(7) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = math.log(sum(math.exp(sim[i][k]) for k in range(7) if k != i))
        per_anchor.append(-sum(sim[i][p] - denom for p in pos) / len(pos))
    expected = sum(per_anchor) / len(per_anchor)
    got = float(losses.supcon_loss(a, labels, tau))
    assert abs(got - expected) < 1e-9


def test_siglip_matches_formula():
    a, b, s = _feats(n=5)
    bias = torch.tensor(-3.0, dtype=torch.float64)
    logits = s * a @ b.T + bias  # open_clip passes the exponentiated scale
    y = 2 * torch.eye(5, dtype=torch.float64) - 1
    expected = -F.logsigmoid(y * logits).sum() / 5
    got = losses.siglip_loss(a, b, s, bias)
    assert abs(float(got) - float(expected)) < 1e-9
