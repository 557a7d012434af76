r"""Intra-op thread count for the solvers' loops on CPU.

A solve is thousands of small tensor operations (a FISTA iteration on a batch of 8
episodes touches tensors of 10^3-10^5 elements).  ATen runs each one above its grain
size as an OpenMP parallel region; when the cores are shared (a training step whose
backbone, data loading or other processes keep them busy) every region can wait a
scheduler time slice for a descheduled worker thread.  Measured on the 2-vCPU
development VM under load (scripts/train_throughput.py features, ResNet-12, 8
episodes of 5-way 5-shot, d = 2560): the group-sparse solve took 30 s with torch's
default 2 threads and 0.8 s with 1 thread.  The solvers therefore run their CPU
loops with ``cpu_threads`` (default 1) intra-op threads and restore torch's setting
afterwards; on other devices nothing changes.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

__all__ = ["solver_threads"]


@contextlib.contextmanager
def solver_threads(device: torch.device, n_threads: Optional[int]):
    """Run the block with at most ``n_threads`` intra-op threads when ``device`` is the
    CPU (``None``: leave torch's setting).  Restores the previous count on exit."""
    old = torch.get_num_threads()
    if n_threads is None or torch.device(device).type != "cpu" or old <= n_threads:
        yield
        return
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)
