import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and graphs: one intra-op thread is far faster than two (much faster on a
    busy machine); the previous count is restored after the module. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
