"""Chunked parallel linear scan in Triton, forward and backward, registered with torch.library.

h_t = a_t ⊙ h_{t-1} + b_t with resets, the diagonal recurrence of S5 (Smith et al. 2023) with the
done flags of resettable S5 (Lu et al. 2023); semantics as in `reference.linear_scan_reference`.

One program owns one batch row and BLOCK_N channels and walks time in chunks of BLOCK_T steps:

    (A_t, B_t, R_t) = inclusive scan of the chunk's (a_t, b_t, r_t) under the resettable operator
                      (a_i, b_i, r_i) • (a_j, b_j, r_j)
                        = (r_j ? a_j : a_j a_i,  r_j ? b_j : a_j b_i + b_j,  r_i ∨ r_j)
    h_t = R_t ? B_t : A_t h_carry + B_t      (h_carry: the state before the chunk, h0 at first)
    h_carry = h at the chunk's last step

The within-chunk scan is `tl.associative_scan` (log depth); chunks follow one another, so the
state never passes through a cumulative product or a division. The backward pass is the same
scan run backwards in time: g_t = dL/dh_t + (r_{t+1} ? 0 : conj(a_{t+1}) g_{t+1}), then
dL/db_t = g_t, dL/da_t = r_t ? 0 : g_t conj(h_{t-1}) (h_{-1} = h0) and
dL/dh0 = r_0 ? 0 : conj(a_0) g_0 (PyTorch's conjugate convention for complex gradients).

Complex tensors are read through `torch.view_as_real` (real, imaginary interleaved) and the
operator is written on real and imaginary parts. Arithmetic is float32 (float64 for float64 and
complex128 inputs); h is stored in the input dtype and reused by the backward pass.
"""

import torch
import triton
import triton.language as tl

MAX_BLOCK_T = 64  # time steps per chunk (the within-chunk scan is log2(BLOCK_T) deep)
MAX_BLOCK_N = 32  # channels per program
TRITON_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)


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
    h_t = R_t ? B_t : A_t h_carry + B_t."""
    if COMPLEX:
        scan_ar, scan_ai, scan_br, scan_bi, scan_r = tl.associative_scan(
            (ar, ai, br, bi, r), 0, _combine_complex
        )
        cut = scan_r != 0
        out_r = tl.where(cut, scan_br, scan_ar * hr[None, :] - scan_ai * hi[None, :] + scan_br)
        out_i = tl.where(cut, scan_bi, scan_ar * hi[None, :] + scan_ai * hr[None, :] + scan_bi)
    else:
        scan_a, scan_b, scan_r = tl.associative_scan((ar, br, r), 0, _combine_real)
        out_r = tl.where(scan_r != 0, scan_b, scan_a * hr[None, :] + scan_b)
        out_i = tl.zeros_like(out_r)
    return out_r, out_i


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
def _linear_scan_fwd_kernel(
    a_ptr,
    b_ptr,
    reset_ptr,
    h0_ptr,
    h_ptr,
    T,
    N,
    HAS_RESET: tl.constexpr,
    HAS_H0: tl.constexpr,
    COMPLEX: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    steps = tl.arange(0, BLOCK_T)
    if HAS_H0:
        hr, hi = _load(h0_ptr, batch * N + cols, col_ok, COMPLEX, ACC)
    else:
        hr = tl.zeros([BLOCK_N], ACC)
        hi = tl.zeros([BLOCK_N], ACC)
    for start in range(0, T, BLOCK_T):
        t = start + steps
        mask = (t < T)[:, None] & col_ok[None, :]
        offs = batch * T * N + t.to(tl.int64)[:, None] * N + cols[None, :]
        ar, ai = _load(a_ptr, offs, mask, COMPLEX, ACC)
        br, bi = _load(b_ptr, offs, mask, COMPLEX, ACC)
        r = _load_reset(reset_ptr, batch * T + t, t < T, HAS_RESET, BLOCK_N)
        out_r, out_i = _scan_chunk(ar, ai, br, bi, r, hr, hi, COMPLEX)
        _store(h_ptr, offs, mask, out_r, out_i, COMPLEX)
        # The carry is the last row; rows past T (zero-padded) only matter after the last chunk.
        last = (steps == BLOCK_T - 1)[:, None]
        hr = tl.sum(tl.where(last, out_r, 0.0), axis=0)
        hi = tl.sum(tl.where(last, out_i, 0.0), axis=0)


@triton.jit
def _linear_scan_bwd_kernel(
    a_ptr,
    h_ptr,
    reset_ptr,
    h0_ptr,
    grad_h_ptr,
    grad_a_ptr,
    grad_b_ptr,
    T,
    N,
    HAS_RESET: tl.constexpr,
    HAS_H0: tl.constexpr,
    COMPLEX: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    steps = tl.arange(0, BLOCK_T)
    gr_carry = tl.zeros([BLOCK_N], ACC)
    gi_carry = tl.zeros([BLOCK_N], ACC)
    if HAS_H0:
        h0r, h0i = _load(h0_ptr, batch * N + cols, col_ok, COMPLEX, ACC)
    for start in range(0, T, BLOCK_T):
        # Chunk rows in reverse time order, so the forward scan runs backwards in time over the
        # elements (conj(a_{t+1}), dL/dh_t, r_{t+1}); a_T = 0 ends the chain at t = T - 1.
        t = T - 1 - (start + steps)
        in_range = t >= 0
        mask = in_range[:, None] & col_ok[None, :]
        next_mask = (in_range & (t + 1 < T))[:, None] & col_ok[None, :]
        offs = batch * T * N + t.to(tl.int64)[:, None] * N + cols[None, :]
        ar, ai = _load(a_ptr, offs + N, next_mask, COMPLEX, ACC)
        ghr, ghi = _load(grad_h_ptr, offs, mask, COMPLEX, ACC)
        r_next = _load_reset(
            reset_ptr, batch * T + t + 1, in_range & (t + 1 < T), HAS_RESET, BLOCK_N
        )
        gr, gi = _scan_chunk(ar, -ai, ghr, ghi, r_next, gr_carry, gi_carry, COMPLEX)
        _store(grad_b_ptr, offs, mask, gr, gi, COMPLEX)
        # dL/da_t = g_t conj(h_{t-1}), with h_{-1} = h0 and zero where a reset cut h_{t-1} off.
        hr, hi = _load(h_ptr, offs - N, mask & (t >= 1)[:, None], COMPLEX, ACC)
        if HAS_H0:
            first = (t == 0)[:, None]
            hr = tl.where(first, h0r[None, :], hr)
            hi = tl.where(first, h0i[None, :], hi)
        r = _load_reset(reset_ptr, batch * T + t, in_range, HAS_RESET, BLOCK_N)
        da_r = tl.where(r != 0, 0.0, gr * hr + gi * hi)
        da_i = tl.where(r != 0, 0.0, gi * hr - gr * hi)
        _store(grad_a_ptr, offs, mask, da_r, da_i, COMPLEX)
        last = (steps == BLOCK_T - 1)[:, None]
        gr_carry = tl.sum(tl.where(last, gr, 0.0), axis=0)
        gi_carry = tl.sum(tl.where(last, gi, 0.0), axis=0)


def _launch_args(a: torch.Tensor) -> tuple[tuple[int, int], dict]:
    """Grid and constexprs shared by the forward and backward launches."""
    batch, steps, channels = a.shape
    block_n = min(triton.next_power_of_2(channels), MAX_BLOCK_N)
    meta = {
        "COMPLEX": a.is_complex(),
        "ACC": tl.float64 if a.dtype in (torch.float64, torch.complex128) else tl.float32,
        "BLOCK_T": min(triton.next_power_of_2(steps), MAX_BLOCK_T),
        "BLOCK_N": block_n,
    }
    return (batch, triton.cdiv(channels, block_n)), meta


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
) -> torch.Tensor:
    """All states h (B, T, N) of the resettable scan; inputs validated by `scan.linear_scan`."""
    h = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    grid, meta = _launch_args(a)
    _linear_scan_fwd_kernel[grid](
        _real_view(a),
        _real_view(b),
        _flags(reset),
        None if h0 is None else _real_view(h0),
        _real_view(h),
        a.shape[1],
        a.shape[2],
        HAS_RESET=reset is not None,
        HAS_H0=h0 is not None,
        **meta,
    )
    return h


@linear_scan_triton.register_fake
def _(a, b, reset=None, h0=None):
    return torch.empty_like(a)


@torch.library.custom_op("seqcontrol::linear_scan_backward", mutates_args=())
def linear_scan_triton_backward(
    a: torch.Tensor,
    h: torch.Tensor,
    reset: torch.Tensor | None,
    h0: torch.Tensor | None,
    grad_h: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/da, dL/db) from dL/dh by the reverse-time scan."""
    grad_a = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    grad_b = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    grid, meta = _launch_args(a)
    _linear_scan_bwd_kernel[grid](
        _real_view(a),
        _real_view(h),
        _flags(reset),
        None if h0 is None else _real_view(h0),
        _real_view(grad_h.to(a.dtype)),
        _real_view(grad_a),
        _real_view(grad_b),
        a.shape[1],
        a.shape[2],
        HAS_RESET=reset is not None,
        HAS_H0=h0 is not None,
        **meta,
    )
    return grad_a, grad_b


@linear_scan_triton_backward.register_fake
def _(a, h, reset, h0, grad_h):
    return torch.empty_like(a), torch.empty_like(a)


def _setup_context(ctx, inputs, output) -> None:
    a, _, reset, h0 = inputs
    ctx.save_for_backward(a, output, reset, h0)


def _backward(ctx, grad_h: torch.Tensor):
    a, h, reset, h0 = ctx.saved_tensors
    grad_a, grad_b = linear_scan_triton_backward(a, h, reset, h0, grad_h)
    grad_h0 = None
    if h0 is not None:
        grad_h0 = a[:, 0].conj() * grad_b[:, 0]
        if reset is not None:
            grad_h0 = torch.where(reset[:, 0, None], torch.zeros_like(grad_h0), grad_h0)
    return grad_a, grad_b, None, grad_h0


linear_scan_triton.register_autograd(_backward, setup_context=_setup_context)
