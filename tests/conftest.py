import os

import pytest
import torch

# Under pytest-xdist (`pytest -n 2`) every worker gets an equal share of the cores: two workers at two threads
# each on a 2-core machine would oversubscribe it (OpenMP slows both several times over).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, os.cpu_count() or 1) // WORKERS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _thread_share(monkeypatch):
    """A test (or the code it runs: ``threads=2`` in a config) may ask for more threads than this worker's share;
    under xdist it gets the share."""
    if WORKERS > 1:
        real = torch.set_num_threads
        monkeypatch.setattr(torch, "set_num_threads", lambda n: real(max(1, min(int(n), THREADS))))


def pytest_configure(config):
    torch.set_num_threads(min(THREADS, torch.get_num_threads()))
