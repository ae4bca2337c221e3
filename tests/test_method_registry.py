"""The method registries: every name a config accepts has an entry, and nothing else does."""

import typing

import pytest

from mmclshift.errors import UserError
from mmclshift.experiments.semisynthetic import METHODS
from mmclshift.train.clip import REAL_LOSSES, real_loss
from mmclshift.train.images import IMAGE_METHODS, MMCL_LOSSES, MMCLLossConfig
from mmclshift.train.linear import LINEAR_MMCL_LOSSES, MMCLConfig
from mmclshift.train.stacked import STACKED_LOSSES


def _choices(cls, field):
    return set(typing.get_args(typing.get_type_hints(cls)[field]))


def test_config_choices_are_the_registered_losses():
    assert set(MMCL_LOSSES) == _choices(MMCLLossConfig, "loss")
    assert set(LINEAR_MMCL_LOSSES) == _choices(MMCLConfig, "loss")
    assert {loss for method, loss in STACKED_LOSSES if method == "mmcl"} == _choices(MMCLLossConfig, "loss")
    assert tuple(IMAGE_METHODS) == METHODS == ("mmcl", "sl", "mmcl_no_intra")


def test_unknown_real_loss_is_one_line_naming_the_known_ones():
    assert real_loss("mmcl", "siglip") is REAL_LOSSES[("mmcl", "siglip")]
    with pytest.raises(UserError, match=r"^unknown MMCL loss 'clap' \(clip, siglip, clip_no_intra\)$"):
        real_loss("mmcl", "clap")
    with pytest.raises(UserError, match=r"^unknown SL loss 'hinge' \(ce, supcon\)$"):
        real_loss("sl", "hinge")
