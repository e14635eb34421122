"""Flash attention in Triton: FlashAttention-2 (Dao 2023) forward and backward.

Forward (Alg. 1): each program owns BLOCK_M queries of one head and streams key/value blocks
through an online softmax (running max m, running sum l, rescaled accumulator), then stores
O = acc / l and the log-sum-exp LSE = m + log l for the backward. Backward (Alg. 2): a
preprocess computes D = rowsum(dO ⊙ O); one kernel per key block accumulates dK and dV over
the query blocks (and over every query head of a grouped-query kv head, so no atomics); one
kernel per query block accumulates dQ over the key blocks. Both recompute P = exp(S - LSE).

Masks: causal, sliding window (blocks entirely outside the window are never visited),
variable-length packing through `cu_seqlens` (one program row per sequence), and sequence
lengths that are not multiples of the block sizes (boundary-checked loads and stores).
Scores use exp2 with log2(e) folded into the scale; accumulation is float32.

Grid: (sequences × heads, blocks) — the (batch, head) index on axis 0, which allows 2^31 - 1
programs, and the block index on axis 1 (CUDA allows 65,535 there). With `cu_seqlens` the number
of blocks is that of the packed length T, an upper bound that needs no host sync; programs past
their sequence's end return at once. Pointer offsets are 64-bit.

The kernels are registered as `torch.ops.seqcontrol.flash_attention_forward / _backward`
(torch.library custom ops with autograd and fake-tensor rules), so they compose with autograd
and torch.compile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from common.kernels.backend import fp32_dot_precision, triton_interpreted

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # not float64
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _sequence(CU, b, seq_len_fixed, VARLEN: tl.constexpr):
    """(batch index into the tensor, first token, length) of the sequence of program row b."""
    if VARLEN:
        batch = 0
        start = tl.load(CU + b)
        seq_len = tl.load(CU + b + 1) - start
        start = start.to(tl.int64)  # 64-bit: start * HEAD_DIM may pass 2^31
    else:
        batch = b
        start = 0
        seq_len = seq_len_fixed
    return batch, start, seq_len


@triton.jit
def _allowed(i, j, seq_len, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """Mask where query i may see key j (i, j broadcast against each other)."""
    ok = (i < seq_len) & (j < seq_len)
    if CAUSAL:
        ok = ok & (j <= i)
    if WINDOWED:
        ok = ok & (i - j < window) & (j - i < window)
    return ok


@triton.jit
def _key_range(
    start_m,
    seq_len,
    window,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOWED: tl.constexpr,
):
    """[lo, hi) of the key blocks that queries start_m .. start_m + BLOCK_M - 1 can see."""
    lo = 0
    hi = seq_len
    if CAUSAL:
        hi = tl.minimum(seq_len, start_m + BLOCK_M)
    if WINDOWED:
        lo = tl.maximum(0, start_m - window + 1) // BLOCK_N * BLOCK_N
        if not CAUSAL:
            hi = tl.minimum(seq_len, start_m + BLOCK_M + window - 1)
    return lo, hi


@triton.jit
def _query_range(
    start_n,
    seq_len,
    window,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOWED: tl.constexpr,
):
    """[lo, hi) of the query blocks that see any of keys start_n .. start_n + BLOCK_N - 1."""
    lo = 0
    hi = seq_len
    if CAUSAL:
        lo = start_n // BLOCK_M * BLOCK_M
    if WINDOWED:
        hi = tl.minimum(seq_len, start_n + BLOCK_N + window - 1)
        if not CAUSAL:
            lo = tl.maximum(0, start_n - window + 1) // BLOCK_M * BLOCK_M
    return lo, hi


@triton.jit
def _forward_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    CU,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_lb,
    stride_lh,
    seq_len_fixed,
    num_heads,
    group,
    scale,
    window,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOWED: tl.constexpr,
    VARLEN: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # (batch, head) on grid axis 0 (up to 2^31 - 1 programs), query block on axis 1 (65,535).
    b = tl.program_id(0).to(tl.int64) // num_heads  # 64-bit offsets for large tensors
    h = tl.program_id(0).to(tl.int64) % num_heads
    start_m = tl.program_id(1) * BLOCK_M
    batch, seq_start, seq_len = _sequence(CU, b, seq_len_fixed, VARLEN)
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_offs = offs_m.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    q_rows = Q + batch * stride_qb + h * stride_qh + seq_start * HEAD_DIM
    k_rows = K + batch * stride_kb + (h // group) * stride_kh + seq_start * HEAD_DIM
    v_rows = V + batch * stride_kb + (h // group) * stride_kh + seq_start * HEAD_DIM
    m_valid = offs_m < seq_len
    qk_scale = scale * LOG2E
    q = tl.load(q_rows + q_offs, mask=m_valid[:, None], other=0.0)

    # Online softmax state in log2 units: running max m_i, running sum l_i, accumulator.
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lo, hi = _key_range(start_m, seq_len, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOWED)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_valid = offs_n[:, None] < seq_len
        kv_offs = offs_n.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(k_rows + kv_offs, mask=n_valid, other=0.0)
        v = tl.load(v_rows + kv_offs, mask=n_valid, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        allowed = _allowed(offs_m[:, None], offs_n[None, :], seq_len, window, CAUSAL, WINDOWED)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    l_i = tl.where(m_valid, l_i, 1.0)  # rows past the end of the sequence saw no key
    o = acc / l_i[:, None]
    o_rows = Out + batch * stride_qb + h * stride_qh + seq_start * HEAD_DIM
    tl.store(o_rows + q_offs, o.to(Out.dtype.element_ty), mask=m_valid[:, None])
    lse_rows = LSE + batch * stride_lb + h * stride_lh + seq_start
    tl.store(lse_rows + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=m_valid)


@triton.jit
def _delta_kernel(
    Out,
    DO,
    DLSE,
    DELTA,
    num_rows,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):
    """D_i = rowsum(dO_i ⊙ O_i) - dLSE_i over the flattened (B·H·T, D) rows."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < num_rows
    offs = rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    o = tl.load(Out + offs, mask=valid[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=valid[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + rows, mask=valid, other=0.0)
    tl.store(DELTA + rows, delta, mask=valid)


@triton.jit
def _dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    CU,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_lb,
    stride_lh,
    seq_len_fixed,
    kv_heads,
    group,
    scale,
    window,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOWED: tl.constexpr,
    VARLEN: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT_GROUP: tl.constexpr,
):
    """dV = Σ Pᵀ dO, dK = scale · Σ dSᵀ Q for one key block, summed over the query blocks and
    the `group` query heads that share this kv head. Works on transposed scores Sᵀ (N, M).
    SPLIT_GROUP: one program per *query* head instead, writing its share to float32 DK / DV
    buffers shaped like Q (summed over the group afterwards): `group`× the programs for GQA
    shapes whose kv heads alone leave the GPU under-filled."""
    if SPLIT_GROUP:
        b = tl.program_id(0).to(tl.int64) // (kv_heads * group)
        h_first = tl.program_id(0).to(tl.int64) % (kv_heads * group)
        hk = h_first // group
        heads_here = 1
    else:
        b = tl.program_id(0).to(tl.int64) // kv_heads
        hk = tl.program_id(0).to(tl.int64) % kv_heads
        h_first = hk * group
        heads_here = group
    start_n = tl.program_id(1) * BLOCK_N
    batch, seq_start, seq_len = _sequence(CU, b, seq_len_fixed, VARLEN)
    if start_n >= seq_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_offset = batch * stride_kb + hk * stride_kh + seq_start * HEAD_DIM
    kv_offs = offs_n.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    n_valid = offs_n[:, None] < seq_len
    k = tl.load(K + kv_offset + kv_offs, mask=n_valid, other=0.0)
    v = tl.load(V + kv_offset + kv_offs, mask=n_valid, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    qk_scale = scale * LOG2E
    lo, hi = _query_range(start_n, seq_len, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOWED)
    for g in range(heads_here):
        h = h_first + g
        q_rows = Q + batch * stride_qb + h * stride_qh + seq_start * HEAD_DIM
        do_rows = DO + batch * stride_qb + h * stride_qh + seq_start * HEAD_DIM
        lse_rows = LSE + batch * stride_lb + h * stride_lh + seq_start
        delta_rows = DELTA + batch * stride_lb + h * stride_lh + seq_start
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + offs_m0
            m_valid = offs_m < seq_len
            q_offs = offs_m.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
            q = tl.load(q_rows + q_offs, mask=m_valid[:, None], other=0.0)
            do = tl.load(do_rows + q_offs, mask=m_valid[:, None], other=0.0)
            lse = tl.load(lse_rows + offs_m, mask=m_valid, other=0.0) * LOG2E
            delta = tl.load(delta_rows + offs_m, mask=m_valid, other=0.0)
            s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
            allowed_t = _allowed(
                offs_m[None, :], offs_n[:, None], seq_len, window, CAUSAL, WINDOWED
            )
            p_t = tl.exp2(tl.where(allowed_t, s_t - lse[None, :], float("-inf")))
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    if SPLIT_GROUP:  # this query head's share, in a buffer shaped like Q
        out_offset = batch * stride_qb + h_first * stride_qh + seq_start * HEAD_DIM
    else:
        out_offset = kv_offset
    tl.store(DK + out_offset + kv_offs, (dk * scale).to(DK.dtype.element_ty), mask=n_valid)
    tl.store(DV + out_offset + kv_offs, dv.to(DV.dtype.element_ty), mask=n_valid)


@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    CU,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_lb,
    stride_lh,
    seq_len_fixed,
    num_heads,
    group,
    scale,
    window,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOWED: tl.constexpr,
    VARLEN: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ = scale · Σ dS K for one query block, dS = P ⊙ (dO Vᵀ - D)."""
    b = tl.program_id(0).to(tl.int64) // num_heads  # 64-bit offsets for large tensors
    h = tl.program_id(0).to(tl.int64) % num_heads
    start_m = tl.program_id(1) * BLOCK_M
    batch, seq_start, seq_len = _sequence(CU, b, seq_len_fixed, VARLEN)
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_offset = batch * stride_qb + h * stride_qh + seq_start * HEAD_DIM
    q_offs = offs_m.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    m_valid = offs_m < seq_len
    q = tl.load(Q + q_offset + q_offs, mask=m_valid[:, None], other=0.0)
    do = tl.load(DO + q_offset + q_offs, mask=m_valid[:, None], other=0.0)
    lse_offset = batch * stride_lb + h * stride_lh + seq_start
    lse = tl.load(LSE + lse_offset + offs_m, mask=m_valid, other=0.0) * LOG2E
    delta = tl.load(DELTA + lse_offset + offs_m, mask=m_valid, other=0.0)
    k_rows = K + batch * stride_kb + (h // group) * stride_kh + seq_start * HEAD_DIM
    v_rows = V + batch * stride_kb + (h // group) * stride_kh + seq_start * HEAD_DIM
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    qk_scale = scale * LOG2E
    lo, hi = _key_range(start_m, seq_len, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOWED)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_valid = offs_n[:, None] < seq_len
        kv_offs = offs_n.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(k_rows + kv_offs, mask=n_valid, other=0.0)
        v = tl.load(v_rows + kv_offs, mask=n_valid, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        allowed = _allowed(offs_m[:, None], offs_n[None, :], seq_len, window, CAUSAL, WINDOWED)
        p = tl.exp2(tl.where(allowed, s - lse[:, None], float("-inf")))
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    tl.store(DQ + q_offset + q_offs, (dq * scale).to(DQ.dtype.element_ty), mask=m_valid[:, None])


KIB = 1024
# Shared memory one block may opt in to, by compute capability (CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability"): the limit the launch table is checked
# against when the device does not report it.
SHARED_MEMORY = {
    (7, 5): 64 * KIB,  # T4, RTX 20xx
    (8, 0): 163 * KIB,  # A100
    (8, 6): 99 * KIB,  # RTX 30xx, A10, A40
    (8, 7): 163 * KIB,  # Jetson Orin
    (8, 9): 99 * KIB,  # L4, L40, RTX 40xx
    (9, 0): 227 * KIB,  # H100, H200
    (10, 0): 227 * KIB,  # B200
    (12, 0): 99 * KIB,  # RTX 50xx
}
SHARED_MEMORY_MARGIN = 0.9  # leave room for Triton's own scratch (layout conversions)
# Candidate (BLOCK_M, BLOCK_N, num_stages), best first; the first that fits is used. Chosen from
# the FlashAttention-2 Triton tutorial's sizes, not tuned on a GPU (none was lent).
FORWARD_CANDIDATES = ((128, 64, 3), (128, 64, 2), (64, 64, 2), (64, 32, 2), (32, 32, 1))
BACKWARD_CANDIDATES = ((64, 64, 2), (64, 32, 2), (32, 32, 2), (32, 32, 1), (16, 16, 1))
FLOAT32_CANDIDATES = ((64, 32, 2), (32, 32, 2), (32, 32, 1), (16, 16, 1))
DEFAULT_SMS = 132  # SM count assumed off CUDA (H100 SXM), for the interpreter and the planner
GQA_SPLIT_BELOW = 2.0  # split a GQA group over programs when the grid has < this × SMs programs


def shared_memory_bytes(
    block_m: int, block_n: int, stages: int, head_dim: int, dtype: torch.dtype, backward: bool
) -> int:
    """Shared memory a launch keeps in flight, estimated from its pipelined tiles: the forward
    holds a Q tile and `stages` K and V tiles; the dK/dV pass holds K and V and `stages` Q and
    dO tiles (the dQ pass needs less). Scores and accumulators live in registers."""
    element = torch.finfo(dtype).bits // 8
    if backward:
        return element * head_dim * (2 * block_n + 2 * stages * block_m)
    return element * head_dim * (block_m + 2 * stages * block_n)


def shared_memory_limit(device: torch.device | None = None, capability=None) -> int:
    """Bytes of shared memory a block may use: what the CUDA device reports, else the table
    entry for `capability` (unknown capabilities get the smallest entry)."""
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        reported = getattr(props, "shared_memory_per_block_optin", 0)
        if reported:
            return reported
        capability = (props.major, props.minor)
    return SHARED_MEMORY.get(capability, min(SHARED_MEMORY.values()))


def launch_config(
    head_dim: int, dtype: torch.dtype, backward: bool, shared_memory: int
) -> dict[str, int]:
    """The first candidate (block sizes, pipeline stages) whose tiles fit `shared_memory`
    (times SHARED_MEMORY_MARGIN), with 8 warps at head dim 128 and 4 otherwise. A table
    checked against each device's limit rather than `triton.autotune`: it needs no GPU to
    test, and adds no compile-and-time pass on the first call of every shape."""
    if dtype == torch.float32:
        candidates = FLOAT32_CANDIDATES
    else:
        candidates = BACKWARD_CANDIDATES if backward else FORWARD_CANDIDATES
    budget = SHARED_MEMORY_MARGIN * shared_memory
    for block_m, block_n, stages in candidates:
        if shared_memory_bytes(block_m, block_n, stages, head_dim, dtype, backward) <= budget:
            warps = 8 if head_dim == 128 and dtype != torch.float32 else 4
            return {
                "BLOCK_M": block_m,
                "BLOCK_N": block_n,
                "num_warps": warps,
                "num_stages": stages,
            }
    raise ValueError(
        f"no attention launch config fits {shared_memory} bytes of shared memory "
        f"(head_dim={head_dim}, {dtype})"
    )


def _launch(
    head_dim: int, dtype: torch.dtype, backward: bool, device: torch.device
) -> dict[str, int]:
    """Block sizes (tl.dot needs every dimension >= 16) and, on a GPU, warps and stages.
    Small blocks under the CPU interpreter keep the tests quick and exercise several blocks."""
    if triton_interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16}
    return launch_config(head_dim, dtype, backward, shared_memory_limit(device))


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def split_gqa(programs: int, group: int, device: torch.device) -> bool:
    """Run the dK/dV pass per query head (then sum each group) when kv heads × key blocks give
    fewer than GQA_SPLIT_BELOW programs per SM: MQA/GQA with few kv heads and short T."""
    return group > 1 and programs < GQA_SPLIT_BELOW * sm_count(device)


def _grid(
    q: torch.Tensor, cu_seqlens: torch.Tensor | None, heads: int, block: int
) -> tuple[int, int]:
    """(sequences × heads, blocks of the longest sequence). With cu_seqlens the packed length T
    bounds every sequence (no host sync to find the longest); blocks past a sequence's end exit.
    """
    sequences = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    return sequences * heads, triton.cdiv(q.shape[2], block)


def _mask_flags(
    q: torch.Tensor, cu_seqlens: torch.Tensor | None, causal: bool, window: int
) -> dict[str, object]:
    return {
        "HEAD_DIM": q.shape[-1],
        "CAUSAL": causal,
        "WINDOWED": window > 0,
        "VARLEN": cu_seqlens is not None,
        # float32: exact unless torch's matmul fp32_precision is "tf32" (the MoE's rule too)
        "PRECISION": fp32_dot_precision(q.dtype),
    }


@torch.library.custom_op("seqcontrol::flash_attention_forward", mutates_args=())
def flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    causal: bool,
    window: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """O (B, H, T, D) and the float32 natural-log LSE (B, H, T); window=0 means no window."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    cu_seqlens = None if cu_seqlens is None else cu_seqlens.contiguous()
    batch, heads, seq, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq, dtype=torch.float32, device=q.device)
    launch = _launch(q.shape[-1], q.dtype, backward=False, device=q.device)
    _forward_kernel[_grid(q, cu_seqlens, heads, launch["BLOCK_M"])](
        q,
        k,
        v,
        o,
        lse,
        cu_seqlens,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        lse.stride(0),
        lse.stride(1),
        seq,
        heads,
        heads // k.shape[1],
        scale,
        window,
        **_mask_flags(q, cu_seqlens, causal, window),
        **launch,
    )
    return o, lse


@flash_attention_forward.register_fake
def _(q, k, v, cu_seqlens, causal, window, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("seqcontrol::flash_attention_backward", mutates_args=())
def flash_attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    dlse: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    causal: bool,
    window: int,
    scale: float,
    fp32_grads: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV given O and LSE (and optionally the gradient of LSE, which enters as
    D - dLSE). O and LSE may be the merged ones of a longer row (ring attention).

    The gradients come in the inputs' dtype, or in float32 with fp32_grads (the ring backward
    sums them over blocks: rounding each block's share to fp16/bf16 first would lose bits).
    """
    do, q, k, v, o = (t.contiguous() for t in (do, q, k, v, o))
    lse = lse.contiguous()
    cu_seqlens = None if cu_seqlens is None else cu_seqlens.contiguous()
    batch, heads, seq, head_dim = q.shape
    kv_heads = k.shape[1]
    delta = torch.empty_like(lse)
    num_rows = batch * heads * seq
    _delta_kernel[(triton.cdiv(num_rows, 64),)](
        o,
        do,
        None if dlse is None else dlse.contiguous(),
        delta,
        num_rows,
        HEAD_DIM=head_dim,
        BLOCK=64,
        HAS_DLSE=dlse is not None,
    )
    grad_dtype = torch.float32 if fp32_grads else q.dtype
    dq, dk, dv = (torch.empty(t.shape, dtype=grad_dtype, device=t.device) for t in (q, k, v))
    launch = _launch(head_dim, q.dtype, backward=True, device=q.device)
    flags = _mask_flags(q, cu_seqlens, causal, window)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), lse.stride(0), lse.stride(1))
    group = heads // kv_heads
    grid = _grid(q, cu_seqlens, kv_heads, launch["BLOCK_N"])
    split = split_gqa(grid[0] * grid[1], group, q.device)
    if split:  # per-query-head shares, summed over each group below
        grid = (grid[0] * group, grid[1])
        dk_out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        dv_out = torch.empty_like(dk_out)
    else:
        dk_out, dv_out = dk, dv
    _dkdv_kernel[grid](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk_out,
        dv_out,
        cu_seqlens,
        *strides,
        seq,
        kv_heads,
        group,
        scale,
        window,
        **flags,
        **launch,
        SPLIT_GROUP=split,
    )
    if split:
        shape = (q.shape[0], kv_heads, group, *q.shape[2:])
        dk.copy_(dk_out.view(shape).sum(2))
        dv.copy_(dv_out.view(shape).sum(2))
    _dq_kernel[_grid(q, cu_seqlens, heads, launch["BLOCK_M"])](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        cu_seqlens,
        *strides,
        seq,
        heads,
        heads // kv_heads,
        scale,
        window,
        **flags,
        **launch,
    )
    return dq, dk, dv


@flash_attention_backward.register_fake
def _(do, q, k, v, o, lse, dlse, cu_seqlens, causal, window, scale, fp32_grads=False):
    grad_dtype = torch.float32 if fp32_grads else q.dtype
    return tuple(torch.empty_like(t, dtype=grad_dtype) for t in (q, k, v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, causal, window, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
    ctx.causal, ctx.window, ctx.scale = causal, window, scale


def _backward(ctx, do: torch.Tensor, dlse: torch.Tensor | None):
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = flash_attention_backward(
        do, q, k, v, o, lse, dlse, cu_seqlens, ctx.causal, ctx.window, ctx.scale
    )
    return dq, dk, dv, None, None, None, None


flash_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton path of `attention` (inputs already checked, dtype in TRITON_DTYPES): fp32
    accumulation."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return flash_attention_forward(q, k, v, cu_seqlens, causal, window or 0, scale)[0]
