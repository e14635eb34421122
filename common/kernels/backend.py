"""The rules shared by the kernels of attention, MoE and scan: which implementation runs
(`resolve_backend`) and how float32 inputs are multiplied (`fp32_dot_precision`)."""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "reference")


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU interpreter (TRITON_INTERPRET=1, tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend(backend: str) -> None:
    """Raise a ValueError naming the allowed values unless `backend` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; use one of {BACKENDS}")


def resolve_backend(
    backend: str, *tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None
) -> str:
    """`auto` -> "triton" for CUDA tensors, "reference" elsewhere. "triton" on CPU tensors is
    allowed only under TRITON_INTERPRET=1; anything else raises with the allowed values.

    dtypes: the dtypes the Triton kernel takes (None: any). `auto` picks the reference for the
    others (e.g. float64 attention on CUDA); "triton" raises for them.
    """
    check_backend(backend)
    on_cuda = all(t.is_cuda for t in tensors)
    supported = dtypes is None or all(t.dtype in dtypes for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda and supported else "reference"
    if backend == "triton" and not supported:
        got = sorted({str(t.dtype) for t in tensors})
        raise ValueError(f"backend='triton' takes dtypes {dtypes}; got {', '.join(got)}")
    if backend == "triton" and not on_cuda and not triton_interpreted():
        devices = sorted({str(t.device) for t in tensors})
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {devices}) or TRITON_INTERPRET=1 set "
            "before the kernel module is imported"
        )
    return backend


def fp32_dot_precision(dtype: torch.dtype) -> str | None:
    """`input_precision` of every `tl.dot` in the kernels, one policy for attention and MoE:
    float32 inputs follow torch's own matmul setting, `torch.backends.cuda.matmul.fp32_precision`
    ("tf32": TF32 tensor cores, ~1e-3 relative error; "ieee", torch's default: exact float32
    products); other dtypes (float16 / bfloat16) get Triton's default (None). The legacy
    `torch.backends.cuda.matmul.allow_tf32 = True` sets the same flag; it is not read here
    because reading it raises in torch 2.13 once the new API has been used."""
    if dtype != torch.float32:
        return None
    return "tf32" if torch.backends.cuda.matmul.fp32_precision == "tf32" else "ieee"
