"""Plain-PyTorch mixture-of-experts references: loops over experts, differentiable, float64-safe.

Two loops, at two levels:

- `grouped_mm_reference`: the grouped GEMM on tokens already sorted by expert (the layout of
  MegaBlocks, Gale et al. 2022): rows offsets[e]:offsets[e+1] of x times w[e]. This is what
  the layer runs for backend="reference", and what the Triton kernel is tested against.
- `moe_reference`: the whole top-k SwiGLU mixture for given routing decisions, looping over
  experts with a token mask and no sorting (the form of the Switch Transformer equations,
  Fedus et al. 2021, §2.1: y = Σ_i p_i(x) E_i(x) over the selected experts i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> None:
    """Raise a clear error unless x is (M, K), w is (E, K, N) and offsets is int32 (E + 1,)."""
    if x.dim() != 2 or w.dim() != 3:
        raise ValueError(
            f"grouped_mm needs x of shape (M, K) and w of shape (E, K, N); "
            f"got x {tuple(x.shape)} and w {tuple(w.shape)}"
        )
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"grouped_mm: x {tuple(x.shape)} has K={x.shape[1]} but w {tuple(w.shape)} has "
            f"K={w.shape[1]}"
        )
    if offsets.shape != (w.shape[0] + 1,) or offsets.dtype != torch.int32:
        raise ValueError(
            f"grouped_mm: offsets must be int32 of shape (E + 1,) = ({w.shape[0] + 1},) "
            f"(a leading 0, then cumulative token counts); got {offsets.dtype} "
            f"{tuple(offsets.shape)}"
        )
    if x.dtype != w.dtype:
        raise ValueError(f"grouped_mm: x is {x.dtype} but w is {w.dtype}; use one dtype")


def grouped_mm_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """y[offsets[e]:offsets[e+1]] = x[offsets[e]:offsets[e+1]] @ w[e], one matmul per expert.

    x: (M, K) rows sorted by expert; w: (E, K, N); offsets: int32 (E + 1,), offsets[0] = 0.
    Rows at or past offsets[-1] belong to no expert and come out zero.
    """
    check_grouped_mm(x, w, offsets)
    bounds = offsets.tolist()
    sizes = [end - start for start, end in zip(bounds, bounds[1:], strict=False)]
    # split / unbind rather than slicing in a loop: their backward is one concatenation, where
    # each slice's backward would write a full-size zero gradient.
    *pieces, rest = x.split([*sizes, x.shape[0] - bounds[-1]])
    products = [piece @ w_e for piece, w_e in zip(pieces, w.unbind(0), strict=True)]
    return torch.cat([*products, rest.new_zeros(rest.shape[0], w.shape[2])])


def moe_reference(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    gates: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """out_n = Σ_j gates[n, j] · SwiGLU_{e_nj}(x_n), looping over experts with a token mask.

    x: (N, D); expert_ids, gates: (N, k); w1, w3: (E, D, H); w2: (E, H, D).
    SwiGLU_e(x) = (silu(x W1_e) ⊙ x W3_e) W2_e (Shazeer 2020, as in Mixtral's experts).
    """
    out = torch.zeros_like(x)
    experts = zip(w1.unbind(0), w3.unbind(0), w2.unbind(0), strict=True)
    for e, (w1_e, w3_e, w2_e) in enumerate(experts):
        token, slot = torch.where(expert_ids == e)
        h = F.silu(x[token] @ w1_e) * (x[token] @ w3_e)
        out = out.index_add(0, token, (h @ w2_e) * gates[token, slot, None])
    return out
