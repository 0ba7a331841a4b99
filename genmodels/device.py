"""Device, precision, CPU-thread and GPU-path choices, made once per run in one place.

    device = setup_device("auto", "fp32", num_threads=None)
    autocast = autocast_factory(device, "bf16")
    forward = maybe_compile(model, "default")      # same parameters, compiled forward

Each speed option (bf16 autocast, channels-last, torch.compile) is off by default and measured by
`python bench/run.py --variants ...` before any becomes a default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

# fp32 (PyTorch's default: cuDNN may run convolutions in TF32); tf32: fp32 numbers, CUDA matrix
# products on the TF32 tensor cores too (a 10-bit mantissa in the products, fp32 sums), and plain
# fp32 where there are none (the CPU: so a sweep's driver or a repeat on a CPU can run a tf32
# sweep's models, as torch.set_float32_matmul_precision does); bf16: autocast.
PRECISIONS = ("fp32", "tf32", "bf16")
# torch.compile modes of the train step ("off": eager). "reduce-overhead" adds CUDA graphs, which cut
# the per-kernel launch cost that dominates these small models' steps on a GPU.
COMPILE_MODES = ("off", "default", "reduce-overhead")


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
    """A zero-argument context-manager factory: bf16 autocast, or a do-nothing context for fp32
    and tf32 (set for the process by `setup_device`)."""
    check_precision(device, precision)
    if precision in ("fp32", "tf32"):
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def setup_device(device: str, precision: str, num_threads: int | None) -> torch.device:
    """Pick the device and set torch's intra-op threads to the CPUs this run was given."""
    resolved = resolve_device(device)
    check_precision(resolved, precision)
    torch.set_num_threads(num_threads or available_cpus())
    if resolved.type == "cuda":
        # PyTorch's defaults let cuDNN convolutions use TF32 but keep matrix products in full fp32;
        # tf32 lets the products use it too. The flag is per process (a run or a Ray trial is one)
        # and backward passes need it, so it is set here, for fp32 too (a later run in the same
        # process must not inherit it), not in an autocast-like context.
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    return resolved


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {mode!r}")


def maybe_compile(fn: Callable, mode: str) -> Callable:
    """`fn` (a module or a loss function) compiled by torch.compile in `mode`, or `fn` itself when
    mode is "off". A compiled module shares its parameters with the original, so checkpoints and
    evaluation keep using the original module and its state_dict keys are unchanged. Shapes are
    static: the loop drops the last partial batch, so one compilation serves the whole run."""
    check_compile_mode(mode)
    if mode == "off":
        return fn
    return torch.compile(fn, mode=mode, dynamic=False)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels-last (NHWC) lets cuDNN pick its faster convolution kernels for bf16 / TF32;
    it only changes 4-d tensors (convolutions), so it is a no-op for the VAE's MLP."""
    return torch.channels_last if channels_last else torch.contiguous_format


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 at least: bf16 autocast outputs are upcast, fp64 stays fp64
    (the fused-exactness tests run the GAN in fp64)."""
    return t if t.dtype == torch.float64 else t.float()
