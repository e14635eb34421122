"""Triton grouped GEMM for dropless mixture of experts: one launch computes every expert.

Tokens are sorted by expert (MegaBlocks, Gale et al. 2022), so expert e owns the contiguous
rows offsets[e]:offsets[e+1]. Forward, y = x @ w[e] per group: the grid covers an upper bound on
the number of row tiles (ceil(M / BLOCK_M) + E) and each program walks the offsets to find which
expert and which rows its tile belongs to; the spare programs write the zero rows past
offsets[-1] (there are always enough of them, see `_grouped_mm_kernel`). No host
synchronisation and no padding to a capacity, so uneven and zero counts cost nothing extra.

Backward: dx = dy @ w[e]^T is the same kernel on a transposed view of w (strides only); the
weight gradient dw[e] = x_e^T @ dy_e is a second kernel with one program per (expert, output
tile) that accumulates over that expert's rows in float32. Experts with no rows get dw[e] = 0.

Both are `torch.library.custom_op`s with fake (meta) implementations and a registered autograd
formula, so they compose with autograd and `torch.compile`. fp32 inputs use TF32 in `tl.dot`
only when `torch.backends.cuda.matmul.fp32_precision == "tf32"`, as `torch.matmul` does
(`common.kernels.backend.fp32_dot_precision`, the policy attention follows too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from common.kernels.backend import fp32_dot_precision, resolve_backend
from common.kernels.moe.reference import check_grouped_mm

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32
NUM_WARPS = 4


@triton.jit
def _grouped_mm_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    offsets_ptr,
    num_experts,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_we,
    stride_wk,
    stride_wn,
    stride_ym,
    stride_yn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # Find this program's expert: tiles are numbered expert by expert, ceil(count_e / BLOCK_M)
    # tiles for expert e. A program past the last tile keeps expert = -1.
    expert = pid_m * 0 - 1
    row_start = pid_m * 0
    row_end = pid_m * 0
    first_tile = pid_m * 0
    for e in range(num_experts):
        start = tl.load(offsets_ptr + e)
        end = tl.load(offsets_ptr + e + 1)
        tiles = tl.cdiv(end - start, BLOCK_M)
        mine = (pid_m >= first_tile) & (pid_m < first_tile + tiles)
        expert = tl.where(mine, e, expert)
        row_start = tl.where(mine, start + (pid_m - first_tile) * BLOCK_M, row_start)
        row_end = tl.where(mine, end, row_end)
        first_tile += tiles
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if expert >= 0:
        rows = (row_start + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < row_end
        w_expert = w_ptr + expert.to(tl.int64) * stride_we
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            a = tl.load(
                x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            b = tl.load(
                w_expert + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        tl.store(
            y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn,
            acc.to(y_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )
    else:
        # Spare program j zeroes tile j of the rows offsets[-1]:M, which belong to no expert.
        # There are enough spare programs: sum_e ceil(c_e / B) <= ceil(S / B) + E - 1 and
        # ceil(M / B) >= ceil(S / B) + ceil((M - S) / B) - 1, with S = offsets[-1], B = BLOCK_M.
        tail = tl.load(offsets_ptr + num_experts)
        rows = (tail + (pid_m - first_tile) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        tl.store(
            y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn,
            tl.zeros((BLOCK_M, BLOCK_N), dtype=y_ptr.dtype.element_ty),
            mask=(rows < M)[:, None] & col_ok[None, :],
        )


@triton.jit
def _grouped_mm_weight_grad_kernel(
    x_ptr,
    dy_ptr,
    dw_ptr,
    offsets_ptr,
    K,
    N,
    stride_xm,
    stride_xk,
    stride_dym,
    stride_dyn,
    stride_dwe,
    stride_dwk,
    stride_dwn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    expert = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_n = tl.program_id(2)
    start = tl.load(offsets_ptr + expert)
    end = tl.load(offsets_ptr + expert + 1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = ks < K
    col_ok = cols < N
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < end
        x_t = tl.load(  # (BLOCK_K, BLOCK_M): the expert's rows of x, transposed on load
            x_ptr + rows[None, :] * stride_xm + ks[:, None] * stride_xk,
            mask=k_ok[:, None] & row_ok[None, :],
            other=0.0,
        )
        dy = tl.load(
            dy_ptr + rows[:, None] * stride_dym + cols[None, :] * stride_dyn,
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(x_t, dy, acc, input_precision=INPUT_PRECISION)
    dw_expert = dw_ptr + expert.to(tl.int64) * stride_dwe
    tl.store(
        dw_expert + ks[:, None] * stride_dwk + cols[None, :] * stride_dwn,
        acc.to(dw_ptr.dtype.element_ty),
        mask=k_ok[:, None] & col_ok[None, :],
    )


@torch.library.custom_op("seqcontrol::grouped_mm", mutates_args=())
def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """y[offsets[e]:offsets[e+1]] = x[offsets[e]:offsets[e+1]] @ w[e] for all experts, one launch.

    x: (M, K) rows sorted by expert; w: (E, K, N) (any strides); offsets: int32 (E + 1,) with
    offsets[0] = 0. Rows at or past offsets[-1] come out zero, as in `grouped_mm_reference`.
    """
    check_grouped_mm(x, w, offsets)
    resolve_backend("triton", x, w, offsets)
    offsets = offsets.contiguous()
    num_experts, K, N = w.shape
    y = x.new_empty(x.shape[0], N)  # every row is written, the ones past offsets[-1] with 0
    grid = (triton.cdiv(x.shape[0], BLOCK_M) + num_experts, triton.cdiv(N, BLOCK_N))
    _grouped_mm_kernel[grid](
        x,
        w,
        y,
        offsets,
        num_experts,
        x.shape[0],
        N,
        K,
        *x.stride(),
        *w.stride(),
        *y.stride(),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        INPUT_PRECISION=fp32_dot_precision(x.dtype),
        num_warps=NUM_WARPS,
    )
    return y


@grouped_mm.register_fake
def _grouped_mm_fake(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[2])


@torch.library.custom_op("seqcontrol::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(
    x: torch.Tensor, dy: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """dw[e] = x[offsets[e]:offsets[e+1]]^T @ dy[offsets[e]:offsets[e+1]]: (E, K, N), one launch."""
    if x.dim() != 2 or dy.dim() != 2 or x.shape[0] != dy.shape[0]:
        raise ValueError(
            f"grouped_mm_weight_grad needs x (M, K) and dy (M, N) with the same M; "
            f"got x {tuple(x.shape)} and dy {tuple(dy.shape)}"
        )
    if offsets.dim() != 1 or offsets.dtype != torch.int32 or x.dtype != dy.dtype:
        raise ValueError(
            f"grouped_mm_weight_grad: offsets must be int32 (E + 1,) and x, dy one dtype; "
            f"got offsets {offsets.dtype} {tuple(offsets.shape)}, x {x.dtype}, dy {dy.dtype}"
        )
    num_experts = offsets.shape[0] - 1
    resolve_backend("triton", x, dy, offsets)
    offsets = offsets.contiguous()
    K, N = x.shape[1], dy.shape[1]
    dw = x.new_empty(num_experts, K, N)
    grid = (num_experts, triton.cdiv(K, BLOCK_K), triton.cdiv(N, BLOCK_N))
    _grouped_mm_weight_grad_kernel[grid](
        x,
        dy,
        dw,
        offsets,
        K,
        N,
        *x.stride(),
        *dy.stride(),
        *dw.stride(),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        INPUT_PRECISION=fp32_dot_precision(x.dtype),
        num_warps=NUM_WARPS,
    )
    return dw


@grouped_mm_weight_grad.register_fake
def _grouped_mm_weight_grad_fake(
    x: torch.Tensor, dy: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    return x.new_empty(offsets.shape[0] - 1, x.shape[1], dy.shape[1])


def _setup_context(ctx, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    x, w, offsets = inputs
    ctx.save_for_backward(x, w, offsets)


def _backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
    x, w, offsets = ctx.saved_tensors
    dx = grouped_mm(dy, w.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
    dw = grouped_mm_weight_grad(x, dy, offsets) if ctx.needs_input_grad[1] else None
    return dx, dw, None


grouped_mm.register_autograd(_backward, setup_context=_setup_context)
