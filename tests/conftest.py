"""tests/ setup: one torch thread per pytest-xdist worker.

`make test` runs the suite on two xdist workers (`-n 2 --dist loadfile`, see the Makefile). Two
workers on two cores with torch's default of one thread per core would run four threads that wait
for each other; pinned to one thread each they keep both cores busy. The environment variables
reach what a worker starts: notebook kernels, grading sandboxes, spawned zoo-build workers.
A run without xdist (plain `pytest tests/...`) keeps torch's default.
"""
from __future__ import annotations

import os


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
