"""Shared by the training tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model gains nothing from threads, and OpenMP spinning hurts on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
