"""Segment-parallel linear scan in Triton, forward and backward, registered with torch.library.

h_t = a_t ⊙ h_{t-1} + b_t with resets, the diagonal recurrence of S5 (Smith et al. 2023) with the
done flags of resettable S5 (Lu et al. 2023); semantics as in `reference.linear_scan_reference`.

Time is split into S segments of SEG_LEN steps (a multiple of the chunk length BLOCK_T) so that
programs run in parallel over (batch row, BLOCK_N channels, segment), in three phases:

1. aggregate: each segment folds its elements from a zero state, chunk by chunk, into one
   element (A_s, B_s, R_s) of the resettable operator
       (a_i, b_i, r_i) • (a_j, b_j, r_j)
         = (r_j ? a_j : a_j a_i,  r_j ? b_j : a_j b_i + b_j,  r_i ∨ r_j);
2. carry: one program per (batch row, channel block) walks the S aggregates,
   c_0 = h0 (zero if None),  c_s = R_{s-1} ? B_{s-1} : A_{s-1} c_{s-1} + B_{s-1};
3. apply: each segment scans its chunks again from its carry c_s and stores h.

Inside a chunk, (A_t, B_t, R_t) is an inclusive `tl.associative_scan` (log depth) and
h_t = R_t ? B_t : A_t h_carry + B_t. With one segment (short T or many rows) phases 1–2 are
skipped and the kernel is the round-1 chunked scan. Depth: T / (S·BLOCK_T) chunk steps in phases
1 and 3 plus S carry steps, against T / BLOCK_T with one program per row; work: a and b are read
twice. The state never passes through a cumulative product or a division.

The backward pass is the same scan run backwards in time over (conj(a_{t+1}), dL/dh_t, r_{t+1}):
g_t = dL/dh_t + (r_{t+1} ? 0 : conj(a_{t+1}) g_{t+1}), with the same three phases over segments
of reversed time; then dL/db_t = g_t, dL/da_t = r_t ? 0 : g_t conj(h_{t-1}) (h_{-1} = h0) and
dL/dh0 = r_0 ? 0 : conj(a_0) g_0 (PyTorch's conjugate convention for complex gradients).

Complex tensors are read through `torch.view_as_real` (real, imaginary interleaved) and the
operator is written on real and imaginary parts. Arithmetic, aggregates and carries are float32
(float64 for float64 / complex128). For float16 / bfloat16 inputs h is stored in float32 as well
(`linear_scan` hands the caller h in the input dtype) and the backward pass reads that float32 h.
"""

import math

import torch
import triton
import triton.language as tl

MAX_BLOCK_T = 64  # time steps per chunk (the within-chunk scan is log2(BLOCK_T) deep)
MAX_BLOCK_N = 32  # channels per program
PROGRAMS_PER_SM = 4  # segments are added until the grid has this many programs per SM
DEFAULT_SMS = 132  # the SM count assumed off CUDA (H100 SXM), for the interpreter
# Cost of one step of the carry phase relative to one chunk step of phases 1 / 3 (it combines
# BLOCK_N elements, a chunk step scans BLOCK_T × BLOCK_N): an estimate, not measured on a GPU.
CARRY_STEP_COST = 0.25
TRITON_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)
HALF = (torch.float16, torch.bfloat16)  # h is kept in float32 for these


@triton.jit
def _combine_real(a_i, b_i, r_i, a_j, b_j, r_j):
    """Resettable S5 operator on real elements (Lu et al. 2023)."""
    cut = r_j != 0
    return tl.where(cut, a_j, a_j * a_i), tl.where(cut, b_j, a_j * b_i + b_j), r_i | r_j


@triton.jit
def _combine_complex(ar_i, ai_i, br_i, bi_i, r_i, ar_j, ai_j, br_j, bi_j, r_j):
    """Resettable S5 operator with a = ar + i·ai and b = br + i·bi."""
    cut = r_j != 0
    ar = tl.where(cut, ar_j, ar_j * ar_i - ai_j * ai_i)
    ai = tl.where(cut, ai_j, ar_j * ai_i + ai_j * ar_i)
    br = tl.where(cut, br_j, ar_j * br_i - ai_j * bi_i + br_j)
    bi = tl.where(cut, bi_j, ar_j * bi_i + ai_j * br_i + bi_j)
    return ar, ai, br, bi, r_i | r_j


@triton.jit
def _scan_chunk(ar, ai, br, bi, r, hr, hi, COMPLEX: tl.constexpr):
    """Scan a (BLOCK_T, BLOCK_N) chunk along time, then apply the (BLOCK_N,) carry (hr, hi):
    h_t = R_t ? B_t : A_t h_carry + B_t. Returns h and the prefix (A_t, R_t)."""
    if COMPLEX:
        scan_ar, scan_ai, scan_br, scan_bi, scan_r = tl.associative_scan(
            (ar, ai, br, bi, r), 0, _combine_complex
        )
        cut = scan_r != 0
        out_r = tl.where(cut, scan_br, scan_ar * hr[None, :] - scan_ai * hi[None, :] + scan_br)
        out_i = tl.where(cut, scan_bi, scan_ar * hi[None, :] + scan_ai * hr[None, :] + scan_bi)
    else:
        scan_ar, scan_br, scan_r = tl.associative_scan((ar, br, r), 0, _combine_real)
        scan_ai = tl.zeros_like(scan_ar)
        out_r = tl.where(scan_r != 0, scan_br, scan_ar * hr[None, :] + scan_br)
        out_i = tl.zeros_like(out_r)
    return out_r, out_i, scan_ar, scan_ai, scan_r


@triton.jit
def _last_row(x, last):
    """Row BLOCK_T - 1 of a (BLOCK_T, BLOCK_N) tile, as (BLOCK_N,)."""
    return tl.sum(tl.where(last, x, 0), axis=0)


@triton.jit
def _fold(acc_r, acc_i, acc_cut, scan_ar, scan_ai, scan_r, last):
    """A and R of a segment so far after appending a chunk whose prefix scan is (scan_a, scan_r):
    with the chunk's totals a = scan_a, cut = scan_r at its last row, A ← cut ? a : a · A
    (complex product) and R ← R ∨ cut."""
    ar, ai, cut = _last_row(scan_ar, last), _last_row(scan_ai, last), _last_row(scan_r, last)
    new_r = tl.where(cut != 0, ar, ar * acc_r - ai * acc_i)
    new_i = tl.where(cut != 0, ai, ar * acc_i + ai * acc_r)
    return new_r, new_i, acc_cut | cut


@triton.jit
def _load(ptr, offs, mask, COMPLEX: tl.constexpr, ACC: tl.constexpr):
    """Load (real, imaginary) parts in the accumulation dtype; imaginary is zero for real inputs."""
    if COMPLEX:
        re = tl.load(ptr + 2 * offs, mask=mask, other=0.0).to(ACC)
        im = tl.load(ptr + 2 * offs + 1, mask=mask, other=0.0).to(ACC)
    else:
        re = tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)
        im = tl.zeros_like(re)
    return re, im


@triton.jit
def _store(ptr, offs, mask, re, im, COMPLEX: tl.constexpr):
    if COMPLEX:
        tl.store(ptr + 2 * offs, re.to(ptr.dtype.element_ty), mask=mask)
        tl.store(ptr + 2 * offs + 1, im.to(ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr + offs, re.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_reset(reset_ptr, offs, mask, HAS_RESET: tl.constexpr, BLOCK_N: tl.constexpr):
    """Done flags of shape (BLOCK_T,) broadcast over the chunk's channels, as int32 (0 or 1)."""
    if HAS_RESET:
        r = tl.load(reset_ptr + offs, mask=mask, other=0).to(tl.int32)
    else:
        r = tl.zeros_like(offs).to(tl.int32)
    return tl.broadcast_to(r[:, None], (r.shape[0], BLOCK_N))


@triton.jit
def _store_aggregate(agg_ptr, agg_r_ptr, batch, seg, cols, mask, N, acc_r, acc_i, acc_cut, hr, hi):
    """Segment element (A, B, R): A, B as (re, im) pairs, then R, in the aggregate buffers."""
    offs = (batch * tl.num_programs(2) + seg) * N + cols
    tl.store(agg_ptr + 4 * offs, acc_r, mask=mask)
    tl.store(agg_ptr + 4 * offs + 1, acc_i, mask=mask)
    tl.store(agg_ptr + 4 * offs + 2, hr, mask=mask)
    tl.store(agg_ptr + 4 * offs + 3, hi, mask=mask)
    tl.store(agg_r_ptr + offs, acc_cut, mask=mask)


@triton.jit
def _program(N, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch row, channels (and which are < N), segment, chunk rows and the
    mask of a chunk's last row."""
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    seg = tl.program_id(2).to(tl.int64)
    steps = tl.arange(0, BLOCK_T)
    return batch, cols, seg, cols < N, steps, (steps == BLOCK_T - 1)[:, None]


@triton.jit
def _carry_in(
    carry_ptr,
    batch,
    seg,
    cols,
    col_ok,
    N,
    HAS_CARRY: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The state entering this segment (phase 3: from the carry phase), else zero."""
    if HAS_CARRY:
        carry = (batch * tl.num_programs(2) + seg) * N + cols
        re = tl.load(carry_ptr + 2 * carry, mask=col_ok, other=0.0)
        im = tl.load(carry_ptr + 2 * carry + 1, mask=col_ok, other=0.0)
    else:
        re = tl.zeros([BLOCK_N], ACC)
        im = tl.zeros([BLOCK_N], ACC)
    return re, im


@triton.jit
def _segment_carry_kernel(
    agg_ptr,
    agg_r_ptr,
    h0_ptr,
    carry_ptr,
    S,
    N,
    HAS_H0: tl.constexpr,
    COMPLEX: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Phase 2: c_0 = h0, c_s = R_{s-1} ? B_{s-1} : A_{s-1} c_{s-1} + B_{s-1}, over segments."""
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if HAS_H0:
        hr, hi = _load(h0_ptr, batch * N + cols, col_ok, COMPLEX, ACC)
    else:
        hr = tl.zeros([BLOCK_N], ACC)
        hi = tl.zeros([BLOCK_N], ACC)
    offs = batch * S * N + cols
    tl.store(carry_ptr + 2 * offs, hr, mask=col_ok)
    tl.store(carry_ptr + 2 * offs + 1, hi, mask=col_ok)
    for seg in range(1, S):
        prev = offs + (seg - 1) * N
        ar = tl.load(agg_ptr + 4 * prev, mask=col_ok, other=0.0)
        ai = tl.load(agg_ptr + 4 * prev + 1, mask=col_ok, other=0.0)
        br = tl.load(agg_ptr + 4 * prev + 2, mask=col_ok, other=0.0)
        bi = tl.load(agg_ptr + 4 * prev + 3, mask=col_ok, other=0.0)
        cut = tl.load(agg_r_ptr + prev, mask=col_ok, other=0) != 0
        hr, hi = (
            tl.where(cut, br, ar * hr - ai * hi + br),
            tl.where(cut, bi, ar * hi + ai * hr + bi),
        )
        tl.store(carry_ptr + 2 * (prev + N), hr, mask=col_ok)
        tl.store(carry_ptr + 2 * (prev + N) + 1, hi, mask=col_ok)


@triton.jit
def _linear_scan_fwd_kernel(
    a_ptr,
    b_ptr,
    reset_ptr,
    h0_ptr,
    carry_ptr,
    h_ptr,
    agg_ptr,
    agg_r_ptr,
    T,
    N,
    SEG_LEN,
    HAS_RESET: tl.constexpr,
    HAS_H0: tl.constexpr,
    AGGREGATE: tl.constexpr,
    HAS_CARRY: tl.constexpr,
    COMPLEX: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Phase 1 (AGGREGATE: fold the segment from a zero state, store (A, B, R)) or phase 3
    (scan the segment from its carry, or from h0 when there is one segment, and store h)."""
    batch, cols, seg, col_ok, steps, last = _program(N, BLOCK_T, BLOCK_N)
    hr, hi = _carry_in(carry_ptr, batch, seg, cols, col_ok, N, HAS_CARRY, ACC, BLOCK_N)
    if HAS_H0 and not AGGREGATE and not HAS_CARRY:
        hr, hi = _load(h0_ptr, batch * N + cols, col_ok, COMPLEX, ACC)
    acc_r = tl.full([BLOCK_N], 1.0, ACC)
    acc_i = tl.zeros([BLOCK_N], ACC)
    acc_cut = tl.zeros([BLOCK_N], tl.int32)
    for start in range(0, SEG_LEN, BLOCK_T):
        t = seg * SEG_LEN + start + steps
        mask = (t < T)[:, None] & col_ok[None, :]
        offs = batch * T * N + t[:, None] * N + cols[None, :]
        ar, ai = _load(a_ptr, offs, mask, COMPLEX, ACC)
        br, bi = _load(b_ptr, offs, mask, COMPLEX, ACC)
        r = _load_reset(reset_ptr, batch * T + t, t < T, HAS_RESET, BLOCK_N)
        out_r, out_i, scan_ar, scan_ai, scan_r = _scan_chunk(ar, ai, br, bi, r, hr, hi, COMPLEX)
        if AGGREGATE:
            acc_r, acc_i, acc_cut = _fold(acc_r, acc_i, acc_cut, scan_ar, scan_ai, scan_r, last)
        else:
            _store(h_ptr, offs, mask, out_r, out_i, COMPLEX)
        # The carry is the last row; rows past T (zero-padded) only occur in the last chunk.
        hr = _last_row(out_r, last)
        hi = _last_row(out_i, last)
    if AGGREGATE:
        _store_aggregate(
            agg_ptr, agg_r_ptr, batch, seg, cols, col_ok, N, acc_r, acc_i, acc_cut, hr, hi
        )


@triton.jit
def _linear_scan_bwd_kernel(
    a_ptr,
    h_ptr,
    reset_ptr,
    h0_ptr,
    grad_h_ptr,
    carry_ptr,
    grad_a_ptr,
    grad_b_ptr,
    agg_ptr,
    agg_r_ptr,
    T,
    N,
    SEG_LEN,
    HAS_RESET: tl.constexpr,
    HAS_H0: tl.constexpr,
    AGGREGATE: tl.constexpr,
    HAS_CARRY: tl.constexpr,
    COMPLEX: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The forward kernel's phases 1 / 3 over reversed time: segment `seg` holds the steps
    t = T - 1 - p for p in [seg · SEG_LEN, (seg + 1) · SEG_LEN)."""
    batch, cols, seg, col_ok, steps, last = _program(N, BLOCK_T, BLOCK_N)
    gr_carry, gi_carry = _carry_in(carry_ptr, batch, seg, cols, col_ok, N, HAS_CARRY, ACC, BLOCK_N)
    if HAS_H0:
        h0r, h0i = _load(h0_ptr, batch * N + cols, col_ok, COMPLEX, ACC)
    acc_r = tl.full([BLOCK_N], 1.0, ACC)
    acc_i = tl.zeros([BLOCK_N], ACC)
    acc_cut = tl.zeros([BLOCK_N], tl.int32)
    for start in range(0, SEG_LEN, BLOCK_T):
        # Chunk rows in reverse time order, so the forward scan runs backwards in time over the
        # elements (conj(a_{t+1}), dL/dh_t, r_{t+1}); a_T = 0 ends the chain at t = T - 1.
        t = T - 1 - (seg * SEG_LEN + start + steps)
        in_range = t >= 0
        mask = in_range[:, None] & col_ok[None, :]
        next_mask = (in_range & (t + 1 < T))[:, None] & col_ok[None, :]
        offs = batch * T * N + t[:, None] * N + cols[None, :]
        ar, ai = _load(a_ptr, offs + N, next_mask, COMPLEX, ACC)
        ghr, ghi = _load(grad_h_ptr, offs, mask, COMPLEX, ACC)
        r_next = _load_reset(
            reset_ptr, batch * T + t + 1, in_range & (t + 1 < T), HAS_RESET, BLOCK_N
        )
        gr, gi, scan_ar, scan_ai, scan_r = _scan_chunk(
            ar, -ai, ghr, ghi, r_next, gr_carry, gi_carry, COMPLEX
        )
        if AGGREGATE:
            acc_r, acc_i, acc_cut = _fold(acc_r, acc_i, acc_cut, scan_ar, scan_ai, scan_r, last)
        else:
            _store(grad_b_ptr, offs, mask, gr, gi, COMPLEX)
            # dL/da_t = g_t conj(h_{t-1}), with h_{-1} = h0 and zero where a reset cut it off.
            hr, hi = _load(h_ptr, offs - N, mask & (t >= 1)[:, None], COMPLEX, ACC)
            if HAS_H0:
                first = (t == 0)[:, None]
                hr = tl.where(first, h0r[None, :], hr)
                hi = tl.where(first, h0i[None, :], hi)
            r = _load_reset(reset_ptr, batch * T + t, in_range, HAS_RESET, BLOCK_N)
            da_r = tl.where(r != 0, 0.0, gr * hr + gi * hi)
            da_i = tl.where(r != 0, 0.0, gi * hr - gr * hi)
            _store(grad_a_ptr, offs, mask, da_r, da_i, COMPLEX)
        gr_carry = _last_row(gr, last)
        gi_carry = _last_row(gi, last)
    if AGGREGATE:
        _store_aggregate(
            agg_ptr,
            agg_r_ptr,
            batch,
            seg,
            cols,
            col_ok,
            N,
            acc_r,
            acc_i,
            acc_cut,
            gr_carry,
            gi_carry,
        )


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def plan(batch: int, steps: int, channels: int, device: torch.device, segment_len: int = 0):
    """(BLOCK_T, BLOCK_N, SEG_LEN, S): chunk and channel block sizes, and the segments that time
    is split into. S is the smaller of (a) what gives the grid (batch, ⌈channels / BLOCK_N⌉, S)
    about PROGRAMS_PER_SM programs per SM (one segment when batch × channel blocks already fill
    the GPU) and (b) the S that minimises the depth 2 · chunks / S + CARRY_STEP_COST · S, i.e.
    √(2 · chunks / CARRY_STEP_COST): past it, more segments lengthen the carry phase more than
    they shorten the others; and one segment where three phases are no shallower than one pass
    (short T). `segment_len` > 0 asks for a segment length instead (rounded up to a multiple of
    BLOCK_T)."""
    block_t = min(triton.next_power_of_2(steps), MAX_BLOCK_T)
    block_n = min(triton.next_power_of_2(channels), MAX_BLOCK_N)
    chunks = triton.cdiv(steps, block_t)
    if segment_len > 0:
        per_segment = triton.cdiv(segment_len, block_t)
    else:
        rows = batch * triton.cdiv(channels, block_n)
        wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), rows)
        shallowest = math.ceil(math.sqrt(2 * chunks / CARRY_STEP_COST))
        per_segment = triton.cdiv(chunks, max(1, min(wanted, shallowest)))
        segments = triton.cdiv(chunks, per_segment)
        if 2 * per_segment + CARRY_STEP_COST * (segments - 1) >= chunks:
            per_segment = chunks  # three phases would not be shallower than one pass
    per_segment = min(per_segment, chunks)
    seg_len = per_segment * block_t
    return block_t, block_n, seg_len, triton.cdiv(steps, seg_len)


def _run_phases(kernel, a: torch.Tensor, h0, tensors: tuple, plan_: tuple, meta: dict) -> None:
    """Phases 1–3 of `kernel` (one launch when there is a single segment). `tensors` are the
    kernel's pointer arguments before (carry, outputs...), with outputs last."""
    batch, steps, channels = a.shape
    block_t, block_n, seg_len, segments = plan_
    grid = (batch, triton.cdiv(channels, block_n), segments)
    common = {"BLOCK_T": block_t, "BLOCK_N": block_n, **meta}
    sizes = (steps, channels, seg_len)
    inputs, outputs = tensors
    if segments == 1:
        kernel[grid](
            *inputs, None, *outputs, None, None, *sizes, AGGREGATE=False, HAS_CARRY=False, **common
        )
        return
    acc = torch.float64 if meta["ACC"] == tl.float64 else torch.float32
    agg = torch.empty((batch, segments, channels, 4), dtype=acc, device=a.device)
    agg_r = torch.empty((batch, segments, channels), dtype=torch.int32, device=a.device)
    carry = torch.empty((batch, segments, channels, 2), dtype=acc, device=a.device)
    nothing = (None,) * len(outputs)
    kernel[grid](
        *inputs, None, *nothing, agg, agg_r, *sizes, AGGREGATE=True, HAS_CARRY=False, **common
    )
    _segment_carry_kernel[grid[:2]](
        agg,
        agg_r,
        h0,
        carry,
        segments,
        channels,
        HAS_H0=h0 is not None,
        COMPLEX=meta["COMPLEX"],
        ACC=meta["ACC"],
        BLOCK_N=block_n,
    )
    kernel[grid](
        *inputs, carry, *outputs, None, None, *sizes, AGGREGATE=False, HAS_CARRY=True, **common
    )


def _meta(a: torch.Tensor, reset, h0) -> dict:
    return {
        "HAS_RESET": reset is not None,
        "HAS_H0": h0 is not None,
        "COMPLEX": a.is_complex(),
        "ACC": tl.float64 if a.dtype in (torch.float64, torch.complex128) else tl.float32,
    }


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype h is stored in: float32 for float16 / bfloat16, else the input dtype."""
    return torch.float32 if dtype in HALF else dtype


def _real_view(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    return torch.view_as_real(x) if x.is_complex() else x


def _flags(reset: torch.Tensor | None) -> torch.Tensor | None:
    return None if reset is None else reset.contiguous().view(torch.uint8)


@torch.library.custom_op("seqcontrol::linear_scan", mutates_args=())
def linear_scan_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    reset: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    segment_len: int = 0,
) -> torch.Tensor:
    """All states h (B, T, N) of the resettable scan, in `state_dtype(a.dtype)`; inputs validated
    by `scan.linear_scan`. `segment_len` = 0 lets `plan` choose the segments."""
    h = torch.empty(a.shape, dtype=state_dtype(a.dtype), device=a.device)
    h0_real = None if h0 is None else _real_view(h0)
    inputs = (_real_view(a), _real_view(b), _flags(reset), h0_real)
    plan_ = plan(*a.shape, a.device, segment_len)
    _run_phases(
        _linear_scan_fwd_kernel, a, h0_real, (inputs, (_real_view(h),)), plan_, _meta(a, reset, h0)
    )
    return h


@linear_scan_triton.register_fake
def _(a, b, reset=None, h0=None, segment_len=0):
    return torch.empty(a.shape, dtype=state_dtype(a.dtype), device=a.device)


@torch.library.custom_op("seqcontrol::linear_scan_backward", mutates_args=())
def linear_scan_triton_backward(
    a: torch.Tensor,
    h: torch.Tensor,
    reset: torch.Tensor | None,
    h0: torch.Tensor | None,
    grad_h: torch.Tensor,
    segment_len: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/da, dL/db) from dL/dh by the reverse-time scan (the carry starts from zero)."""
    grad_a = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    grad_b = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    inputs = (
        _real_view(a),
        _real_view(h),
        _flags(reset),
        None if h0 is None else _real_view(h0),
        _real_view(grad_h.to(h.dtype)),
    )
    plan_ = plan(*a.shape, a.device, segment_len)
    outputs = (_real_view(grad_a), _real_view(grad_b))
    _run_phases(_linear_scan_bwd_kernel, a, None, (inputs, outputs), plan_, _meta(a, reset, h0))
    return grad_a, grad_b


@linear_scan_triton_backward.register_fake
def _(a, h, reset, h0, grad_h, segment_len=0):
    return torch.empty_like(a), torch.empty_like(a)


def _setup_context(ctx, inputs, output) -> None:
    a, _, reset, h0, segment_len = inputs
    ctx.save_for_backward(a, output, reset, h0)
    ctx.segment_len = segment_len


def _backward(ctx, grad_h: torch.Tensor):
    a, h, reset, h0 = ctx.saved_tensors
    grad_a, grad_b = linear_scan_triton_backward(a, h, reset, h0, grad_h, ctx.segment_len)
    grad_h0 = None
    if h0 is not None:
        grad_h0 = a[:, 0].conj() * grad_b[:, 0]
        if reset is not None:
            grad_h0 = torch.where(reset[:, 0, None], torch.zeros_like(grad_h0), grad_h0)
    return grad_a, grad_b, None, grad_h0, None


linear_scan_triton.register_autograd(_backward, setup_context=_setup_context)
