"""Fixtures of the real-data tier tests: small real-format datasets built from scikit-image photos."""

from __future__ import annotations

import logging

import pytest

from mmclshift.data.fixtures import build_fixtures


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init
    return build_fixtures(tmp_path_factory.mktemp("real_fixtures"))
