"""Device and dtype choice, autocast, peak memory and timing that also work on CPU."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator

import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config string (`auto|cpu|cuda|cuda:N`) to a device; `auto` picks CUDA when present."""
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"device={name!r} is not allowed; use one of {DEVICES} (or 'cuda:N')")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but CUDA is not available here")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map `auto|float32|bfloat16|float16` to a dtype; `auto` is bf16 on CUDA, fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not allowed; use one of {('auto', *DTYPES)}")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `dtype`; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory, or the process's peak resident set size on CPU.

    The CPU figure is the high-water mark of the whole process and cannot be reset.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@contextlib.contextmanager
def timer(device: torch.device) -> Iterator[dict[str, float]]:
    """Time a block: CUDA events on GPU (asynchronous work included), wall clock on CPU.

    >>> with timer(torch.device("cpu")) as t: ...
    >>> t["seconds"]
    """
    result: dict[str, float] = {}
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield result
        end.record()
        torch.cuda.synchronize(device)
        result["seconds"] = start.elapsed_time(end) / 1000.0
    else:
        t0 = time.perf_counter()
        yield result
        result["seconds"] = time.perf_counter() - t0


def matmul_flops_per_s(
    device: torch.device, size: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32
) -> float:
    """Measured FLOP/s of a square matmul: the reference a model-FLOP utilisation (MFU) is
    divided by where the chip's datasheet peak is not known (a CPU). The best of `repeats`."""
    gen = torch.Generator(device=device).manual_seed(0)  # the global RNG streams stay untouched
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=gen) for _ in "ab")
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        with timer(device) as t:
            a @ b
        best = min(best, t["seconds"])
    return 2 * size**3 / max(best, 1e-12)
