"""The one rule for choosing a kernel implementation, shared by attention, MoE and scan."""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "reference")


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU interpreter (TRITON_INTERPRET=1, tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """`auto` -> "triton" for CUDA tensors, "reference" elsewhere. "triton" on CPU tensors is
    allowed only under TRITON_INTERPRET=1; anything else raises with the allowed values."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; use one of {BACKENDS}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda else "reference"
    if backend == "triton" and not on_cuda and not triton_interpreted():
        devices = sorted({str(t.device) for t in tensors})
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {devices}) or TRITON_INTERPRET=1 set "
            "before the kernel module is imported"
        )
    return backend
