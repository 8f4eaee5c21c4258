import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Torch on one thread: on a shared 2-core machine two threads stall each other badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
