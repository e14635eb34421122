"""Attention for every paper: one function, Triton flash attention on CUDA, torch elsewhere.

    from common.kernels.attention import attention
    out = attention(q, k, v, causal=True)            # q (B, H, T, D), k/v (B, H_kv, T, D)

Also: `KVCache` + `decode_attention` for incremental decoding, `ring_attention` for sequences
split over the ranks of a process group. See README.md for tolerances and benchmarks.
"""

from __future__ import annotations

import torch

from common.kernels.attention.kv_cache import KVCache, decode_attention
from common.kernels.attention.reference import check_inputs, reference_attention
from common.kernels.attention.ring import ring_attention
from common.kernels.attention.triton import TRITON_DTYPES, flash_attention
from common.kernels.backend import resolve_backend

__all__ = ["KVCache", "attention", "decode_attention", "ring_attention"]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Softmax attention softmax(Q Kᵀ · scale + mask) V, returning (B, H, T, D).

    q (B, H, T, D); k, v (B, H_kv, T, D) with H divisible by H_kv (grouped-query / multi-query:
    query head h reads kv head h // (H / H_kv)); D in {32, 64, 128}.
    causal: query i sees keys j <= i. window=w: keys at distance < w (with causal: itself and
    the w - 1 keys before it). cu_seqlens: int32 (num_seqs + 1,) offsets of sequences packed
    along T with B = 1; attention never crosses their boundaries. scale defaults to D^-1/2.
    backend: "auto" (Triton for float16/bfloat16/float32 CUDA tensors, reference otherwise),
    "triton", "reference".
    """
    check_inputs(q, k, v, window=window, cu_seqlens=cu_seqlens)
    kwargs = {"causal": causal, "window": window, "scale": scale, "cu_seqlens": cu_seqlens}
    if resolve_backend(backend, q, k, v, dtypes=TRITON_DTYPES) == "triton":
        return flash_attention(q, k, v, **kwargs)
    return reference_attention(q, k, v, **kwargs)
