import os

import pytest
import torch

# Tests run on 2 cores next to other work; keep torch from oversubscribing.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tmp_run(tmp_path):
    return tmp_path / "run"
