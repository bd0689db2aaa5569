import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models are tiny: one thread is fastest, and more only contend on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
