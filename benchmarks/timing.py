"""Timing shared by the benchmarks: wall time of one call, waiting for the GPU when there is one."""

from __future__ import annotations

import time

import torch


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
