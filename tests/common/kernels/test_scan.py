"""common.kernels.scan: the resettable linear scan of S5 / resettable S5.

Anchors: a pure-Python loop (independent of torch ops) and gradcheck pin the float64 reference;
every other path (Triton under TRITON_INTERPRET=1, chunked torch, torch's associative_scan) is
compared with that reference in float64 / complex128.
"""

from __future__ import annotations

import math

import pytest
import torch

import common.kernels.scan.triton as scan_triton
from common.kernels.scan import (
    linear_scan,
    linear_scan_associative,
    linear_scan_chunked,
    linear_scan_reference,
)

WIDE = {
    torch.float32: torch.float64,
    torch.float16: torch.float64,
    torch.complex64: torch.complex128,
}
# Bounds on max |error| / max |float64 reference|: ~10x the errors measured (see README.md).
TOLERANCE = {torch.float32: 2e-6, torch.complex64: 2e-6, torch.float16: 5e-3}


def make_inputs(batch, steps, channels, dtype, *, p_reset=0.1, seed=0):
    """S5-like elements: |a| in [0.5, 0.99), complex with a random phase or real with a random sign.

    Returns a, b, reset, h0; a, b, h0 are exactly representable in `dtype`, so the float64
    reference sees the same inputs as the low-precision path.
    """
    gen = torch.Generator().manual_seed(seed)
    wide = WIDE.get(dtype, dtype)
    shape = (batch, steps, channels)
    mag = 0.5 + 0.49 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if wide.is_complex:
        a = torch.polar(mag, 2 * math.pi * torch.rand(shape, generator=gen, dtype=torch.float64))
        b = torch.complex(*torch.randn((2, *shape), generator=gen, dtype=torch.float64))
        h0 = torch.complex(*torch.randn((2, batch, channels), generator=gen, dtype=torch.float64))
    else:
        a = mag * torch.where(torch.rand(shape, generator=gen) < 0.2, -1.0, 1.0).double()
        b = torch.randn(shape, generator=gen, dtype=torch.float64)
        h0 = torch.randn(batch, channels, generator=gen, dtype=torch.float64)
    reset = torch.rand(batch, steps, generator=gen) < p_reset
    return a.to(dtype), b.to(dtype), reset, h0.to(dtype)


def naive_scan(a, b, reset, h0):
    """h_t = a_t * (reset_t ? 0 : h_{t-1}) + b_t on Python numbers, one channel at a time."""
    batch, steps, channels = a.shape
    a_list, b_list = a.tolist(), b.tolist()
    out = [[[0.0] * channels for _ in range(steps)] for _ in range(batch)]
    for i in range(batch):
        for n in range(channels):
            h = 0.0 if h0 is None else h0[i, n].item()
            for t in range(steps):
                if reset is not None and reset[i, t]:
                    h = 0.0
                h = a_list[i][t][n] * h + b_list[i][t][n]
                out[i][t][n] = h
    return torch.tensor(out, dtype=a.dtype)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.to(ref.dtype) - ref).abs().max() / ref.abs().max()).item()


def loss_and_grads(scan, a, b, reset, h0, seed=1):
    """Gradients of a random linear function of all states and of the final state."""
    gen = torch.Generator().manual_seed(seed)
    wide = WIDE.get(a.dtype, a.dtype)
    w = torch.randn(a.shape, generator=gen, dtype=torch.float64).to(wide)
    w_last = torch.randn(h0.shape, generator=gen, dtype=torch.float64).to(wide)
    inputs = [x.detach().requires_grad_() for x in (a, b, h0)]
    h, h_last = scan(inputs[0], inputs[1], reset, inputs[2])
    loss = (h.to(wide) * w).real.sum() + (h_last.to(wide) * w_last).real.sum()
    return h, torch.autograd.grad(loss, inputs)


def reference_wide(a, b, reset, h0):
    wide = WIDE.get(a.dtype, a.dtype)
    return linear_scan_reference(a.to(wide), b.to(wide), reset, h0.to(wide))


def triton_scan(a, b, reset, h0):
    return linear_scan(a, b, reset=reset, h0=h0, backend="triton")


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("with_reset", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_reference_matches_python_loop(dtype, with_reset, with_h0):
    a, b, reset, h0 = make_inputs(2, 9, 3, dtype, p_reset=0.3)
    reset, h0 = (reset if with_reset else None), (h0 if with_h0 else None)
    h, h_last = linear_scan_reference(a, b, reset, h0)
    expected = naive_scan(a, b, reset, h0)
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_last, expected[:, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_reference_gradcheck(dtype):
    a, b, reset, h0 = make_inputs(2, 5, 2, dtype, p_reset=0.3)
    inputs = tuple(x.requires_grad_() for x in (a, b, h0))
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan_reference(a, b, reset, h0), inputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_associative_scan_cross_check(dtype):
    """torch._higher_order_ops.associative_scan (generic mode runs eagerly on CPU) agrees."""
    a, b, reset, h0 = make_inputs(3, 50, 4, dtype, p_reset=0.1)
    for r, h in [(None, None), (reset, h0), (reset, None)]:
        expected, _ = linear_scan_reference(a, b, r, h)
        got, got_last = linear_scan_associative(a, b, r, h)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_last, expected[:, -1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("steps, chunk", [(1, None), (7, None), (50, None), (101, 8), (64, 64)])
def test_chunked_matches_reference(dtype, steps, chunk):
    a, b, reset, h0 = make_inputs(2, steps, 3, dtype, p_reset=0.1)

    def chunked(a, b, reset, h0):
        return linear_scan_chunked(a, b, reset, h0, chunk=chunk)

    h, grads = loss_and_grads(chunked, a, b, reset, h0)
    expected, expected_grads = loss_and_grads(linear_scan_reference, a, b, reset, h0)
    torch.testing.assert_close(h, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_long_sequences_do_not_overflow():
    """|a| = 0.05 over 3000 steps: a cumprod closed form underflows to 0 and divides by it."""
    a, b, reset, h0 = make_inputs(2, 3000, 4, torch.float32, p_reset=0.01)
    a = 0.05 * a / a.abs()
    expected, _ = reference_wide(a, b, reset, h0)
    for scan in (linear_scan_reference, linear_scan_chunked, triton_scan):
        h, _ = scan(a, b, reset, h0)
        assert torch.isfinite(h).all()
        assert relative_error(h, expected) < TOLERANCE[torch.float32]


@pytest.mark.parametrize(
    "dtype, steps, channels, block_t",
    [
        (torch.float32, 70, 5, 64),
        (torch.float32, 70, 40, 16),  # five chunks, two channel blocks
        (torch.complex64, 70, 16, 64),
        (torch.complex64, 37, 4, 16),
        (torch.float16, 70, 8, 64),
    ],
)
def test_triton_matches_float64_reference(monkeypatch, dtype, steps, channels, block_t):
    """Forward values and dL/da, dL/db, dL/dh0 of the Triton kernel (interpreted) vs float64."""
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_T", block_t)
    a, b, reset, h0 = make_inputs(2, steps, channels, dtype, p_reset=0.1, seed=steps + channels)
    reset[0, block_t % steps] = True  # a reset on the first step of a chunk
    h, grads = loss_and_grads(triton_scan, a, b, reset, h0)
    expected, expected_grads = loss_and_grads(reference_wide, a, b, reset, h0)
    assert h.dtype == dtype and h.shape == a.shape
    assert relative_error(h, expected) < TOLERANCE[dtype]
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == dtype
        assert relative_error(got, want) < TOLERANCE[dtype]


def test_triton_without_reset_or_h0():
    """reset=None and h0=None (the kernels' HAS_RESET / HAS_H0 = False branches): values and
    dL/da, dL/db vs the float64 reference, over two chunks and two channel blocks."""
    a, b, _, _ = make_inputs(2, 100, 40, torch.float32, seed=5)
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results = []
    for scan, dtype in ((triton_scan, torch.float32), (linear_scan_reference, torch.float64)):
        leaves = [x.detach().to(dtype).requires_grad_() for x in (a, b)]
        h, _ = scan(*leaves, None, None)
        results.append([h, *torch.autograd.grad((h.double() * w).sum(), leaves)])
    for got, want in zip(*results, strict=True):
        assert relative_error(got, want) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_resets_equal_separate_episodes(backend):
    """One scan over episodes cut by resets = each episode scanned on its own from zero state
    (the first episode from h0)."""
    a, b, reset, h0 = make_inputs(2, 40, 6, torch.complex64, p_reset=0.15, seed=3)
    h, _ = linear_scan(a, b, reset=reset, h0=h0, backend=backend)
    for i in range(a.shape[0]):
        starts = [0, *(t for t in range(1, a.shape[1]) if reset[i, t]), a.shape[1]]
        assert len(starts) > 3, "want several episodes in each row"
        for start, end in zip(starts[:-1], starts[1:], strict=True):
            init = h0[i : i + 1] if start == 0 and not reset[i, 0] else None
            episode, _ = linear_scan_reference(
                a[i : i + 1, start:end].to(torch.complex128),
                b[i : i + 1, start:end].to(torch.complex128),
                None,
                None if init is None else init.to(torch.complex128),
            )
            assert relative_error(h[i : i + 1, start:end], episode) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_two_segments_with_carried_state_equal_one_scan(backend):
    a, b, reset, h0 = make_inputs(2, 50, 5, torch.float32, p_reset=0.1, seed=4)
    h, h_last = linear_scan(a, b, reset=reset, h0=h0, backend=backend)
    cut = 23
    first, first_last = linear_scan(
        a[:, :cut], b[:, :cut], reset=reset[:, :cut], h0=h0, backend=backend
    )
    second, second_last = linear_scan(
        a[:, cut:], b[:, cut:], reset=reset[:, cut:], h0=first_last, backend=backend
    )
    assert reset[:, cut:].any(), "the second segment should contain resets"
    torch.testing.assert_close(torch.cat([first, second], dim=1), h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second_last, h_last, rtol=1e-5, atol=1e-5)


def test_triton_op_registration():
    """torch.library.opcheck (schema, fake kernel, autograd registration, AOT dispatch) passes,
    and the op traces under torch.compile without graph breaks."""
    a, b, reset, h0 = make_inputs(2, 6, 4, torch.complex64, p_reset=0.3)
    args = (a.requires_grad_(), b.requires_grad_(), reset, h0.requires_grad_())
    torch.library.opcheck(scan_triton.linear_scan_triton, args)  # all of opcheck's checks

    def scan(a, b, reset, h0):
        return linear_scan(a, b, reset=reset, h0=h0, backend="triton")

    compiled = torch.compile(scan, backend="aot_eager", fullgraph=True)
    h, grads = loss_and_grads(compiled, a, b, reset, h0)
    expected, expected_grads = loss_and_grads(reference_wide, a, b, reset, h0)
    assert relative_error(h, expected) < TOLERANCE[torch.complex64]
    for got, want in zip(grads, expected_grads, strict=True):
        assert relative_error(got, want) < TOLERANCE[torch.complex64]


def test_auto_backend_on_cpu_is_the_reference():
    a, b, reset, h0 = make_inputs(2, 6, 3, torch.float64)
    h, h_last = linear_scan(a, b, reset=reset, h0=h0)
    expected, _ = linear_scan_reference(a, b, reset, h0)
    torch.testing.assert_close(h, expected, rtol=0, atol=0)


A = torch.zeros(2, 5, 3)
BAD_INPUTS = [
    ({"a": torch.zeros(2, 5)}, r"a must have shape \(B, T, N\); got a.shape=\(2, 5\)"),
    ({"b": torch.zeros(2, 5, 4)}, r"a.shape=\(2, 5, 3\), b.shape=\(2, 5, 4\)"),
    ({"a": torch.zeros(2, 0, 3), "b": torch.zeros(2, 0, 3)}, "at least one time step"),
    ({"b": torch.zeros(2, 5, 3, dtype=torch.float64)}, "b.dtype=torch.float64 differs"),
    ({"a": A.long(), "b": A.long()}, "floating point or complex"),
    (
        {"reset": torch.zeros(2, 4, dtype=torch.bool)},
        r"\(B, T\) = \(2, 5\); got reset.shape=\(2, 4\)",
    ),
    ({"reset": torch.zeros(2, 5)}, "reset must be a bool tensor"),
    ({"h0": torch.zeros(2, 5)}, r"\(B, N\) = \(2, 3\); got h0.shape=\(2, 5\)"),
    ({"h0": torch.zeros(2, 3, dtype=torch.complex64)}, "h0.dtype=torch.complex64 differs"),
    ({"h0": torch.zeros(2, 3, device="meta")}, "h0 is on meta but a is on cpu"),
    ({"backend": "cuda"}, "backend='cuda' is not allowed"),
]


@pytest.mark.parametrize("change, message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(change, message):
    kwargs = {"a": A, "b": A, "reset": None, "h0": None, "backend": "auto", **change}
    with pytest.raises(ValueError, match=message):
        linear_scan(kwargs.pop("a"), kwargs.pop("b"), **kwargs)


def test_triton_rejects_unsupported_dtype():
    a = torch.zeros(1, 3, 2, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="backend='triton' takes dtypes"):
        linear_scan(a, a, backend="triton")


def assert_float64_match(scan, a, b, reset, h0):
    """Values and dL/da, dL/db, dL/dh0 of `scan` = the float64 reference to 1e-10."""
    h, grads = loss_and_grads(scan, a, b, reset, h0)
    expected, expected_grads = loss_and_grads(linear_scan_reference, a, b, reset, h0)
    torch.testing.assert_close(h, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def triton_segments(segment_len):
    def scan(a, b, reset, h0):
        h = scan_triton.linear_scan_triton(a, b, reset, h0, segment_len).to(a.dtype)
        return h, h[:, -1]

    return scan


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("steps, segment_len", [(300, 64), (300, 128), (257, 192), (70, 1000)])
def test_segment_parallel_scan_matches_reference(dtype, steps, segment_len):
    """Round 2: time split over segments (aggregate, carry, apply) = the sequential float64
    reference, forward and backward, with resets on segment boundaries and h0."""
    a, b, reset, h0 = make_inputs(2, steps, 5, dtype, p_reset=0.05, seed=steps)
    reset[0, 128 % steps] = True  # a reset on the first step of a segment (T > 128)
    reset[1, 0] = True  # h0 discarded in one row
    assert_float64_match(triton_segments(segment_len), a, b, reset, h0)


@pytest.mark.parametrize(
    "steps",
    [2048, pytest.param(16384, marks=pytest.mark.slow)],  # 16K: ~50 s interpreted
)
def test_segment_parallel_scan_on_long_sequences(steps):
    """T up to 16,384 with random resets, the planned segments (one row: 16 or 43 segments)."""
    a, b, reset, h0 = make_inputs(1, steps, 2, torch.float64, p_reset=0.002, seed=11)
    assert scan_triton.plan(1, steps, 2, a.device)[3] == {2048: 16, 16384: 43}[steps]
    assert_float64_match(triton_scan, a, b, reset, h0)


@pytest.mark.parametrize(
    "steps",
    [1024, pytest.param(4096, marks=pytest.mark.slow)],  # 4096: ~55 s interpreted
)
def test_float16_scan_keeps_a_float32_state(steps):
    """fp16 inputs, T up to 4096: h (handed back in fp16) and the gradients within 1e-2 of
    float64; the op's own state is float32. (bfloat16 is wrong under the interpreter.)"""
    a, b, reset, h0 = make_inputs(2, steps, 4, torch.float16, p_reset=0.01, seed=12)
    assert scan_triton.linear_scan_triton(a, b, reset, h0).dtype == torch.float32
    h, grads = loss_and_grads(triton_scan, a, b, reset, h0)
    expected, expected_grads = loss_and_grads(reference_wide, a, b, reset, h0)
    assert h.dtype == torch.float16
    assert relative_error(h, expected) < 1e-2
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.float16
        assert relative_error(got, want) < 1e-2


def test_strided_inputs():
    """Non-contiguous a, b (a transposed view) give the same states as contiguous copies."""
    a, b, reset, h0 = make_inputs(2, 6, 130, torch.complex64, seed=13)
    strided = torch.stack([a, a], dim=3)[..., 0]  # stride 2 over channels
    assert not strided.is_contiguous() and torch.equal(strided, a)
    torch.testing.assert_close(
        triton_scan(strided, b, reset, h0)[0], triton_scan(a, b, reset, h0)[0], rtol=0, atol=0
    )


@pytest.mark.parametrize(
    "batch, steps, channels, segments",
    [
        (8, 128, 32, 1),  # a PPO rollout of 2 chunks: three phases would be no shallower
        (8, 512, 32, 8),  # 8 rows fill few SMs, so T is split
        (32, 8192, 64, 9),  # 64 rows × 9 segments of 960 steps = 576 programs
        (1, 16384, 2, 43),  # one row: the depth bound (2·256/S + S/4 is least near S = 45)
        (256, 4096, 256, 1),  # 2,048 programs already: one segment, the round-1 kernel
        (4, 50, 8, 1),  # a single chunk cannot be split
    ],
)
def test_plan_fills_the_gpu_for_rl_shapes(batch, steps, channels, segments):
    block_t, block_n, seg_len, count = scan_triton.plan(batch, steps, channels, torch.device("cpu"))
    assert count == segments and seg_len % block_t == 0 and count * seg_len >= steps
    assert (count - 1) * seg_len < steps  # no empty segment
