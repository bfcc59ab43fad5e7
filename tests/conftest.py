import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracles.py


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collectstart(collector):
    """Seed before each test module is imported, so that the tensors a module draws at import
    time (``X = torch.randn(...)``) do not depend on which modules were collected before it."""
    if isinstance(collector, pytest.Module):
        torch.manual_seed(0)
