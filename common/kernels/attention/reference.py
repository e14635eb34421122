"""Plain-PyTorch softmax attention: the float64-checkable reference for the Triton kernel.

    O = softmax(Q Kᵀ · scale + M) V,  LSE_i = log Σ_j exp(S_ij)

with the masks M of FlashAttention-2 (Dao 2023): causal, sliding window, grouped-query heads
(query head h reads kv head h // (H / H_kv)) and variable-length packing (`cu_seqlens`, a
block-diagonal mask). `attention_forward` / `attention_backward` spell out the math of the
FlashAttention-2 forward and backward passes (Alg. 1 and 2) densely; the ring attention uses
them as its per-block computation on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> None:
    """Raise a ValueError naming the shapes when q (B, H, T, D), k/v (B, H_kv, T, D) don't fit."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim); got {_shape(t)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k {_shape(k)}, v {_shape(v)}")
    batch, heads, seq, head_dim = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, seq, head_dim):
        raise ValueError(f"q {_shape(q)} and k/v {_shape(k)} must agree in batch, seq and head_dim")
    if heads % k.shape[1]:
        raise ValueError(
            f"q has {heads} heads, not a multiple of the {k.shape[1]} kv heads "
            f"(q {_shape(q)}, k {_shape(k)})"
        )
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim={head_dim} (q {_shape(q)}) is not supported; use {HEAD_DIMS}")
    if len({q.device, k.device, v.device}) > 1:
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if len({q.dtype, k.dtype, v.dtype}) > 1:
        raise ValueError(f"q, k, v have different dtypes: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use one of {DTYPES}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
        raise ValueError(f"window={window!r} must be a positive int or None")
    if window is not None and window < 1:
        raise ValueError(f"window={window} must be >= 1 (a query sees keys at distance < window)")
    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, q)


def _check_cu_seqlens(cu_seqlens: torch.Tensor, q: torch.Tensor) -> None:
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            "cu_seqlens must be a 1-D int32 tensor of num_seqs + 1 offsets; got "
            f"{cu_seqlens.dtype} of shape {_shape(cu_seqlens)}"
        )
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, q on {q.device}")
    if q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, q/k/v are packed with batch 1; got q {_shape(q)}")
    if torch.compiler.is_compiling():
        return
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0 or offsets[-1] != q.shape[2] or offsets != sorted(offsets):
        raise ValueError(
            f"cu_seqlens={offsets} must rise from 0 to the packed length {q.shape[2]} "
            f"(q {_shape(q)})"
        )


def sequence_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Index of the packed sequence that each of the `total` tokens belongs to."""
    lengths = cu_seqlens.diff().long()
    ids = torch.arange(lengths.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, lengths, output_size=total)


def attention_mask(
    t_q: int,
    t_k: int,
    *,
    causal: bool,
    window: int | None,
    q_offset: int = 0,
    cu_seqlens: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Boolean (t_q, t_k) mask, True where query i (at key position q_offset + i) sees key j.

    causal: j <= i; window w: |i - j| < w; cu_seqlens: i and j in the same packed sequence.
    None when every query sees every key.
    """
    if not causal and window is None and cu_seqlens is None:
        return None
    i = torch.arange(t_q, device=device)[:, None] + q_offset
    j = torch.arange(t_k, device=device)[None, :]
    allowed = torch.ones(t_q, t_k, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j).abs() < window
    if cu_seqlens is not None:
        seq = sequence_ids(cu_seqlens, t_k)
        allowed &= seq[q_offset : q_offset + t_q, None] == seq[None, :]
    return allowed


def _scores(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """S = Q Kᵀ · scale in float32 (float64 for float64 inputs), -inf where masked; GQA by
    repeating each kv head H / H_kv times."""
    compute = torch.promote_types(q.dtype, torch.float32)
    k = k.to(compute).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = (q.to(compute) @ k.transpose(-1, -2)) * scale
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention with a given mask: (O in q's dtype, LSE in float32/float64).

    q may be shorter than k/v (decoding); every query must see at least one key.
    """
    s = _scores(q, k, mask, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    v = v.to(s.dtype).repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return (p @ v).to(q.dtype), lse


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    window: int | None,
    scale: float,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable explicit attention returning (O, LSE): the float64 oracle."""
    mask = attention_mask(
        q.shape[2],
        k.shape[2],
        causal=causal,
        window=window,
        cu_seqlens=cu_seqlens,
        device=q.device,
    )
    return masked_attention(q, k, v, mask, scale)


def attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    *,
    causal: bool,
    window: int | None,
    scale: float,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward (Dao 2023, Alg. 2) in dense form, given O and LSE:

        P = exp(S - LSE),  dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP - rowsum(dO ⊙ O)),
        dQ = dS K · scale,  dK = dSᵀ Q · scale

    dK/dV of a kv head sum over its group of query heads. O and LSE may be those of a longer
    row than this block (ring attention passes the merged ones): P is then this block's share.
    """
    mask = attention_mask(
        q.shape[2],
        k.shape[2],
        causal=causal,
        window=window,
        cu_seqlens=cu_seqlens,
        device=q.device,
    )
    s = _scores(q, k, mask, scale)
    compute = s.dtype
    group = q.shape[1] // k.shape[1]
    p = torch.exp(s - lse.to(compute)[..., None])
    do_, q_ = do.to(compute), q.to(compute)
    k_ = k.to(compute).repeat_interleave(group, dim=1)
    v_ = v.to(compute).repeat_interleave(group, dim=1)
    delta = (do_ * o.to(compute)).sum(-1, keepdim=True)
    dv = p.transpose(-1, -2) @ do_
    ds = p * (do_ @ v_.transpose(-1, -2) - delta)
    dq = (ds @ k_) * scale
    dk = (ds.transpose(-1, -2) @ q_) * scale
    batch, kv_heads, seq, head_dim = k.shape

    def group_sum(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, kv_heads, group, seq, head_dim).sum(2)

    return dq.to(q.dtype), group_sum(dk).to(k.dtype), group_sum(dv).to(v.dtype)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference path of `attention`: explicit math in float64, else
    F.scaled_dot_product_attention with an explicit boolean mask (is_causal for plain causal)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.dtype == torch.float64:
        return attention_forward(
            q, k, v, causal=causal, window=window, scale=scale, cu_seqlens=cu_seqlens
        )[0]
    plain_causal = causal and window is None and cu_seqlens is None
    mask = (
        None
        if plain_causal
        else attention_mask(
            q.shape[2],
            k.shape[2],
            causal=causal,
            window=window,
            cu_seqlens=cu_seqlens,
            device=q.device,
        )
    )
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        is_causal=plain_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
