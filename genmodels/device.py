"""Device, precision and CPU-thread choice, made once per run in one place.

    device, autocast = setup_device("auto", "fp32", num_threads=None)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

PRECISIONS = ("fp32", "bf16")


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset / cgroups, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when present (Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but torch sees no GPU; use 'auto' or 'cpu'")
    return resolved


def check_precision(device: torch.device, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --precision fp32")


def autocast_factory(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    """A zero-argument context-manager factory: bf16 autocast, or a do-nothing context for fp32."""
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def setup_device(device: str, precision: str, num_threads: int | None) -> torch.device:
    """Pick the device and set torch's intra-op threads to the CPUs this run was given."""
    resolved = resolve_device(device)
    check_precision(resolved, precision)
    torch.set_num_threads(num_threads or available_cpus())
    return resolved
