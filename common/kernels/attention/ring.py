"""Ring (context-parallel) attention: Liu, Zaharia & Abbeel 2023, "Ring Attention with
Blockwise Transformers for Near-Infinite Context".

The sequence is split into contiguous, equal chunks, rank r of the process group holding
chunk r of Q, K and V. Over W steps each rank attends its queries to the K/V chunk it holds,
then passes that chunk to rank r + 1 (point-to-point isend/irecv, started before the block's
compute so that the transfer overlaps it). Partial outputs are merged with their
log-sum-exp:

    LSE = log(exp(LSE_a) + exp(LSE_b)),  O = exp(LSE_a - LSE) O_a + exp(LSE_b - LSE) O_b

Causal: chunk j is skipped by rank r when j > r, and is causally masked when j = r.

Backward: a second ring, no recomputation of the forward. Each rank keeps its final O and LSE;
the FlashAttention-2 backward of one block given the *merged* O and LSE yields exactly that
block's share of dQ, dK, dV, computed in float32 and returned in float32 (not rounded to the
input dtype) to be summed in float32 accumulators. dQ stays on its rank; the dK/dV accumulators
travel round the ring together with their K/V chunk and arrive back at their owner after W
passes. (float64 inputs use float64 throughout.)

Per-block compute is the Triton kernel for the "triton" backend (CUDA, or the interpreter in
tests) and the explicit reference math otherwise (CPU / gloo).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from common.kernels.attention.reference import attention_backward, attention_forward, check_inputs
from common.kernels.attention.triton import (
    TRITON_DTYPES,
    flash_attention_backward,
    flash_attention_forward,
)
from common.kernels.backend import resolve_backend


def _block_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        return flash_attention_forward(q, k, v, None, causal, 0, scale)
    return attention_forward(q, k, v, causal=causal, window=None, scale=scale, cu_seqlens=None)


def _block_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's dQ, dK, dV in float32 (float64 for float64 inputs), summed over the ring."""
    if backend == "triton":
        return flash_attention_backward(do, q, k, v, o, lse, None, None, causal, 0, scale, True)
    # The explicit math runs in float32 (float64) and returns the inputs' dtype: upcast them.
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    do, q, k, v, o = (t.to(acc_dtype) for t in (do, q, k, v, o))
    return attention_backward(
        do, q, k, v, o, lse, causal=causal, window=None, scale=scale, cu_seqlens=None
    )


def merge_partials(
    out: torch.Tensor, lse: torch.Tensor, out_block: torch.Tensor, lse_block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two softmax-normalised partial outputs over disjoint key sets by their LSE."""
    merged = torch.logaddexp(lse, lse_block)
    out = out * torch.exp(lse - merged)[..., None]
    return out + out_block * torch.exp(lse_block - merged)[..., None], merged


class _Ring:
    """Rank, world size and ring neighbours (as global ranks) in a process group."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        if dist.is_available() and dist.is_initialized():
            self.group = dist.group.WORLD if group is None else group
            self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)
            self.next = dist.get_global_rank(self.group, (self.rank + 1) % self.world)
            self.prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world)
        else:
            self.group, self.rank, self.world = None, 0, 1

    def start_pass(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[dist.Work]]:
        """Send `tensors` to the next rank and receive the previous rank's into new buffers."""
        tensors = [t.contiguous() for t in tensors]
        received = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, r, self.prev, self.group) for r in received]
        return received, dist.batch_isend_irecv(ops)

    def source(self, step: int) -> int:
        """Index of the chunk held at `step` (chunks move to rank + 1 at every step)."""
        return (self.rank - step) % self.world


def _wait(works: list[dist.Work]) -> None:
    for work in works:
        work.wait()


class RingAttention(torch.autograd.Function):
    """Forward and backward rings; see the module docstring."""

    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        scale: float,
        group: dist.ProcessGroup | None,
        backend: str,
    ) -> torch.Tensor:
        ring = _Ring(group)
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        out = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=acc_dtype, device=q.device)
        kv = [k, v]
        for step in range(ring.world):
            last = step == ring.world - 1
            if not last:
                kv_next, works = ring.start_pass(kv)
            source = ring.source(step)
            if not causal or source <= ring.rank:
                o_block, lse_block = _block_forward(
                    q, *kv, causal and source == ring.rank, scale, backend
                )
                out, lse = merge_partials(out, lse, o_block.to(acc_dtype), lse_block.to(acc_dtype))
            if not last:
                _wait(works)
                kv = kv_next
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.group, ctx.backend = causal, scale, group, backend
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        ring = _Ring(ctx.group)
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        dkv = [torch.zeros(k.shape, dtype=acc_dtype, device=k.device) for _ in range(2)]
        kv = [k, v]
        for step in range(ring.world):
            last = step == ring.world - 1
            if not last:
                kv_next, kv_works = ring.start_pass(kv)
            source = ring.source(step)
            if not ctx.causal or source <= ring.rank:
                dq_block, dk_block, dv_block = _block_backward(
                    grad_out,
                    q,
                    *kv,
                    out,
                    lse,
                    ctx.causal and source == ring.rank,
                    ctx.scale,
                    ctx.backend,
                )
                dq += dq_block
                dkv[0] += dk_block
                dkv[1] += dv_block
            # dK/dV accumulators travel with their chunk; the W-th pass brings them home.
            if ring.world > 1:
                dkv, dkv_works = ring.start_pass(dkv)
                _wait(dkv_works)
            if not last:
                _wait(kv_works)
                kv = kv_next
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None


def _check_same_shapes(q: torch.Tensor, k: torch.Tensor, ring: _Ring) -> None:
    """Every rank must hold chunks of the same shapes (one small all-reduce)."""
    if ring.world == 1:
        return
    shapes = torch.tensor([*q.shape, *k.shape], device=q.device)
    extremes = torch.cat([shapes, -shapes])
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=ring.group)
    largest, smallest = extremes[:8].tolist(), (-extremes[8:]).tolist()
    if largest != smallest:
        raise ValueError(
            f"ring attention needs equal chunks on every rank; q/k shapes range from "
            f"{smallest[:4]}/{smallest[4:]} to {largest[:4]}/{largest[4:]} "
            f"(this rank {ring.rank}: q {tuple(q.shape)}, k {tuple(k.shape)})"
        )


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Context-parallel attention over `group` (the default group when None).

    q (B, H, T_local, D) and k/v (B, H_kv, T_local, D) are this rank's contiguous chunk of the
    sequence, chunks in rank order and of equal length on every rank; returns this rank's
    (B, H, T_local, D) output. Without an initialised process group it is plain attention.
    Sliding windows and cu_seqlens are not supported here.
    """
    check_inputs(q, k, v)
    chosen = resolve_backend(backend, q, k, v, dtypes=TRITON_DTYPES)
    _check_same_shapes(q, k, _Ring(group))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttention.apply(q, k, v, causal, scale, group, chosen)
