"""Attention: Triton kernel (CPU interpreter) and reference path vs float64 math, masks vs their
definitions, gradcheck, KV-cache decoding vs the full forward, torch.compile, bad inputs."""

from types import SimpleNamespace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import common.kernels.attention as attention_package
import common.kernels.attention.ring as attention_ring
import common.kernels.attention.triton as attention_triton
from common.kernels.attention import KVCache, attention, decode_attention, ring_attention
from common.kernels.attention.reference import (
    attention_backward,
    attention_forward,
    attention_mask,
)
from common.kernels.attention.triton import flash_attention_backward, flash_attention_forward

# (batch, heads, kv_heads, seq, head_dim, causal, window, cu_seqlens); seq 37 is not a multiple
# of the interpreter's 16-wide blocks; [0, 16, 16, 37] packs an empty sequence.
CASES = {
    "full": (2, 2, 2, 37, 32, False, None, None),
    "causal": (2, 4, 4, 64, 64, True, None, None),
    "gqa_causal": (1, 4, 2, 37, 32, True, None, None),
    "mqa_d128": (2, 4, 1, 16, 128, False, None, None),
    "window_causal": (1, 2, 1, 64, 32, True, 5, None),
    "window": (1, 4, 2, 37, 64, False, 7, None),
    "varlen_causal": (1, 4, 2, 37, 32, True, None, [0, 5, 21, 37]),
    "varlen_window": (1, 2, 2, 37, 32, False, 3, [0, 16, 16, 37]),
}
# Largest |error| vs float64 allowed as atol + rtol * |reference| (see README.md).
TOLERANCE = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
}


def _inputs(batch, heads, kv_heads, seq, head_dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, seq, head_dim)] + [(batch, kv_heads, seq, head_dim)] * 2
    return [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]


def _values_and_grads(fn, tensors, dtype, grad_out):
    leaves = [t.detach().to(dtype).requires_grad_() for t in tensors]
    out = fn(*leaves)
    (out * grad_out.to(dtype)).sum().backward()
    return [out] + [t.grad for t in leaves]


def _float64_truth(tensors, causal, window, cu_seqlens, grad_out):
    def fn(q, k, v):
        scale = q.shape[-1] ** -0.5
        return attention_forward(
            q, k, v, causal=causal, window=window, scale=scale, cu_seqlens=cu_seqlens
        )[0]

    return _values_and_grads(fn, tensors, torch.float64, grad_out)


def _case(name):
    batch, heads, kv_heads, seq, head_dim, causal, window, offsets = CASES[name]
    tensors = _inputs(batch, heads, kv_heads, seq, head_dim)
    cu_seqlens = None if offsets is None else torch.tensor(offsets, dtype=torch.int32)
    grad_out = torch.randn(batch, heads, seq, head_dim, dtype=torch.float64)
    return tensors, causal, window, cu_seqlens, grad_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_float64_reference(name, dtype):
    tensors, causal, window, cu_seqlens, grad_out = _case(name)
    truth = _float64_truth(tensors, causal, window, cu_seqlens, grad_out)

    def fn(q, k, v):
        kwargs = {"causal": causal, "window": window, "cu_seqlens": cu_seqlens}
        return attention(q, k, v, backend="triton", **kwargs)

    got = _values_and_grads(fn, tensors, dtype, grad_out)
    for label, g, t in zip(("out", "dq", "dk", "dv"), got, truth, strict=True):
        assert g.dtype == dtype and g.shape == t.shape, label
        torch.testing.assert_close(g.double(), t, **TOLERANCE[dtype], msg=lambda m, s=label: s + m)


@pytest.mark.parametrize("name", ["gqa_causal", "window", "varlen_window"])
def test_reference_path_matches_float64(name):
    """The float32 reference path (SDPA with an explicit mask) agrees with the float64 math."""
    tensors, causal, window, cu_seqlens, grad_out = _case(name)
    truth = _float64_truth(tensors, causal, window, cu_seqlens, grad_out)

    def fn(q, k, v):
        kwargs = {"causal": causal, "window": window, "cu_seqlens": cu_seqlens}
        return attention(q, k, v, backend="reference", **kwargs)

    got = _values_and_grads(fn, tensors, torch.float32, grad_out)
    for g, t in zip(got, truth, strict=True):
        torch.testing.assert_close(g.double(), t, **TOLERANCE[torch.float32])


def _check_against_float64(tensors, causal, window, cu_seqlens, grad_out, dtype):
    truth = _float64_truth(tensors, causal, window, cu_seqlens, grad_out)

    def fn(q, k, v):
        kwargs = {"causal": causal, "window": window, "cu_seqlens": cu_seqlens}
        return attention(q, k, v, backend="triton", **kwargs)

    got = _values_and_grads(fn, tensors, dtype, grad_out)
    for label, g, t in zip(("out", "dq", "dk", "dv"), got, truth, strict=True):
        torch.testing.assert_close(g.double(), t, **TOLERANCE[dtype], msg=lambda m, s=label: s + m)


def test_triton_with_gpu_block_sizes(monkeypatch):
    """The GPU launch sizes (forward 128 × 64: query and key blocks differ; backward 64 × 64) on
    T = 150 with GQA 4/2, causal + window, and packing with an empty sequence and a sequence
    longer than one forward query block."""
    monkeypatch.setattr(attention_triton, "triton_interpreted", lambda: False)
    cpu = torch.device("cpu")  # off CUDA the smallest listed shared memory (64 KiB) applies
    forward = attention_triton._launch(32, torch.float16, backward=False, device=cpu)
    backward = attention_triton._launch(32, torch.float16, backward=True, device=cpu)
    assert (forward["BLOCK_M"], forward["BLOCK_N"]) == (128, 64)
    assert (backward["BLOCK_M"], backward["BLOCK_N"]) == (64, 64)
    tensors = _inputs(1, 4, 2, 150, 32, seed=1)
    grad_out = torch.randn(1, 4, 150, 32, dtype=torch.float64)
    cu_seqlens = torch.tensor([0, 0, 140, 150], dtype=torch.int32)
    _check_against_float64(tensors, True, 40, cu_seqlens, grad_out, torch.float16)


def test_triton_reads_strided_cu_seqlens():
    """A non-contiguous cu_seqlens view gives the same result as its contiguous copy."""
    tensors = _inputs(1, 2, 1, 20, 32)
    grad_out = torch.randn(1, 2, 20, 32, dtype=torch.float64)
    cu_seqlens = torch.tensor([0, 0, 7, 7, 20, 20], dtype=torch.int32)[::2]  # [0, 7, 20]
    assert not cu_seqlens.is_contiguous()
    _check_against_float64(tensors, True, None, cu_seqlens, grad_out, torch.float32)


def test_triton_backward_float32_gradients():
    """fp32_grads (used by the ring backward) returns the kernel's float32 accumulators: the
    same numbers as the default, before their rounding to float16."""
    tensors, causal, _, _, grad_out = _case("gqa_causal")
    q, k, v, do = (t.half() for t in (*tensors, grad_out))
    scale = 32**-0.5
    o, lse = flash_attention_forward(q, k, v, None, causal, 0, scale)
    args = (do, q, k, v, o, lse, None, None, causal, 0, scale)
    rounded = flash_attention_backward(*args)
    accumulated = flash_attention_backward(*args, True)
    for r, a in zip(rounded, accumulated, strict=True):
        assert r.dtype == torch.float16 and a.dtype == torch.float32
        assert torch.equal(a.half(), r)
    assert any(not torch.equal(a, a.half().float()) for a in accumulated)


def test_auto_backend_uses_the_reference_for_float64_on_cuda(monkeypatch):
    """Triton takes no float64: `auto` must not pick it for float64 CUDA tensors. Fake CUDA
    tensors stand in for real ones (the dispatch only reads shapes, devices and dtypes) and the
    two paths are replaced by recorders."""
    chosen = []

    def recorder(label):
        return lambda *args, **kwargs: chosen.append(label)

    monkeypatch.setattr(attention_package, "flash_attention", recorder("T"))
    monkeypatch.setattr(attention_package, "reference_attention", recorder("R"))
    ring_apply = SimpleNamespace(apply=lambda *args: chosen.append(args[-1]))
    monkeypatch.setattr(attention_ring, "RingAttention", ring_apply)
    with FakeTensorMode():
        for dtype in (torch.float64, torch.float16):
            q, k, v = (torch.empty(1, 2, 8, 32, dtype=dtype, device="cuda") for _ in range(3))
            attention(q, k, v)
            ring_attention(q, k, v)
    assert chosen == ["R", "reference", "T", "triton"]


def test_triton_lse_and_its_gradient():
    """The kernel's saved log-sum-exp is exact and differentiable (ring attention merges it)."""
    tensors, causal, window, cu_seqlens, grad_out = _case("gqa_causal")
    grad_lse = torch.randn(grad_out.shape[:3], dtype=torch.float64)
    scale = 32**-0.5

    def loss(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in tensors]
        out, lse = fn(*leaves)
        ((out * grad_out.to(dtype)).sum() + (lse * grad_lse.to(lse.dtype)).sum()).backward()
        return [lse] + [t.grad for t in leaves]

    got = loss(
        lambda q, k, v: flash_attention_forward(q, k, v, None, True, 0, scale), torch.float32
    )
    truth = loss(
        lambda q, k, v: attention_forward(
            q, k, v, causal=True, window=None, scale=scale, cu_seqlens=None
        ),
        torch.float64,
    )
    for g, t in zip(got, truth, strict=True):
        torch.testing.assert_close(g.double(), t, **TOLERANCE[torch.float32])


def _mask_by_definition(seq, causal, window, offsets):
    sequence = [next(s for s in range(len(offsets) - 1) if i < offsets[s + 1]) for i in range(seq)]
    return torch.tensor(
        [
            [
                (not causal or j <= i)
                and (window is None or abs(i - j) < window)
                and sequence[i] == sequence[j]
                for j in range(seq)
            ]
            for i in range(seq)
        ]
    )


@pytest.mark.parametrize(
    "causal, window, offsets",
    [(True, None, [0, 9]), (True, 3, [0, 9]), (False, 2, [0, 9]), (True, 2, [0, 4, 4, 9])],
)
def test_mask_follows_the_definition(causal, window, offsets):
    """causal: j <= i; window w: |i - j| < w (with causal: i itself and the w - 1 keys before)."""
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32) if len(offsets) > 2 else None
    mask = attention_mask(9, 9, causal=causal, window=window, cu_seqlens=cu_seqlens)
    assert torch.equal(mask, _mask_by_definition(9, causal, window, offsets))
    if causal and window is not None:
        assert mask.sum(1).max() == window


@pytest.mark.parametrize(
    "causal, window, offsets", [(True, 3, None), (False, None, [0, 2, 6]), (False, 4, None)]
)
def test_reference_gradcheck_float64(causal, window, offsets):
    tensors = [t.requires_grad_() for t in _inputs(1, 2, 1, 6, 32)]
    cu_seqlens = None if offsets is None else torch.tensor(offsets, dtype=torch.int32)

    def fn(q, k, v):
        return attention(
            q, k, v, causal=causal, window=window, cu_seqlens=cu_seqlens, backend="reference"
        )

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


@pytest.mark.parametrize("name", ["gqa_causal", "window", "varlen_causal"])
def test_reference_backward_formulas_match_autograd(name):
    """The explicit FlashAttention-2 backward (used per ring block) equals autograd."""
    tensors, causal, window, cu_seqlens, grad_out = _case(name)
    out, *grads = _float64_truth(tensors, causal, window, cu_seqlens, grad_out)
    q, k, v = tensors
    scale = q.shape[-1] ** -0.5
    kwargs = {"causal": causal, "window": window, "scale": scale, "cu_seqlens": cu_seqlens}
    _, lse = attention_forward(q, k, v, **kwargs)
    explicit = attention_backward(grad_out, q, k, v, out.detach(), lse, **kwargs)
    for e, g in zip(explicit, grads, strict=True):
        torch.testing.assert_close(e, g, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("window, max_len", [(None, 12), (4, 6)])
def test_kv_cache_decoding_equals_full_causal_forward(window, max_len):
    """Prefill 5 tokens, then decode one at a time; a window-4 cache of 6 slots must drop old
    tokens on the way and still give the full windowed forward's outputs."""
    q, k, v = _inputs(2, 4, 2, 12, 32)
    full = attention(q, k, v, causal=True, window=window)
    cache = KVCache.allocate(2, 2, max_len, 32, window=window, dtype=torch.float64)
    outputs, t = [], 0
    for step in [5] + [1] * 7:
        cache.append(k[:, :, t : t + step], v[:, :, t : t + step])
        outputs.append(decode_attention(q[:, :, t : t + step], cache))
        t += step
    torch.testing.assert_close(torch.cat(outputs, dim=2), full, atol=1e-12, rtol=1e-12)
    assert cache.start + cache.length == 12
    if window is not None:
        assert cache.start > 0 and cache.length <= max_len


def test_kv_cache_float32_decode_uses_sdpa_path():
    q, k, v = (t.float() for t in _inputs(1, 2, 2, 8, 32))
    cache = KVCache.allocate(1, 2, 8, 32)
    steps = []
    for t in range(8):
        cache.append(k[:, :, t : t + 1], v[:, :, t : t + 1])
        steps.append(decode_attention(q[:, :, t : t + 1], cache))
    full = attention(q, k, v, causal=True)
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-6, rtol=1e-6)


def test_kv_cache_rewind_then_refeed_equals_a_fresh_cache():
    torch.manual_seed(0)
    k, v = torch.randn(2, 1, 2, 10, 32, dtype=torch.float64).unbind(0)
    q = torch.randn(1, 2, 4, 32, dtype=torch.float64)
    fresh = KVCache.allocate(1, 2, 10, 32, dtype=torch.float64)
    fresh.append(k[:, :, :6], v[:, :, :6])
    rewound = KVCache.allocate(1, 2, 10, 32, dtype=torch.float64)
    rewound.append(k, v)
    rewound.rewind(2)
    assert rewound.length == 2
    rewound.append(k[:, :, 2:6], v[:, :, 2:6])
    torch.testing.assert_close(decode_attention(q, rewound), decode_attention(q, fresh))
    with pytest.raises(ValueError, match="cannot rewind to 7"):
        rewound.rewind(7)


def test_kv_cache_errors():
    cache = KVCache.allocate(1, 2, 4, 32)
    k = torch.zeros(1, 2, 3, 32)
    cache.append(k, k)
    with pytest.raises(ValueError, match=r"3 cached \+ 2 new tokens > max_len=4"):
        cache.append(k[:, :, :2], k[:, :, :2])
    with pytest.raises(ValueError, match=r"shape \(1, 2, 1, 32\).*got k \(1, 3, 1, 32\)"):
        cache.append(torch.zeros(1, 3, 1, 32), torch.zeros(1, 3, 1, 32))
    with pytest.raises(ValueError, match="4 queries but 3 cached tokens"):
        decode_attention(torch.zeros(1, 2, 4, 32), cache)
    with pytest.raises(ValueError, match="window=5 must lie in"):
        KVCache.allocate(1, 2, 4, 32, window=5)


def test_torch_compile_and_autograd_through_the_custom_op():
    """The registered op traces with fake tensors (fullgraph) and gives the eager numbers."""
    q, k, v = (t.float().requires_grad_() for t in _inputs(1, 2, 1, 16, 32))

    def fn(q, k, v):
        return attention(q, k, v, causal=True, backend="triton")

    eager = fn(q, k, v)
    (dq,) = torch.autograd.grad(eager.sum(), q)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v)
    (dq_compiled,) = torch.autograd.grad(compiled.sum(), q)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(dq_compiled, dq)


def _bad(shape_q=(1, 4, 8, 32), shape_kv=(1, 2, 8, 32), **overrides):
    tensors = {"q": torch.zeros(shape_q), "k": torch.zeros(shape_kv), "v": torch.zeros(shape_kv)}
    kwargs = {key: value for key, value in overrides.items() if key not in tensors}
    tensors.update({key: value for key, value in overrides.items() if key in tensors})
    return tensors, kwargs


@pytest.mark.parametrize(
    "case, message",
    [
        (_bad(shape_q=(4, 8, 32)), r"q must be 4-D .* got \(4, 8, 32\)"),
        (_bad(shape_q=(1, 3, 8, 32)), r"3 heads, not a multiple of the 2 kv heads"),
        (
            _bad(shape_q=(1, 4, 8, 48), shape_kv=(1, 2, 8, 48)),
            r"head_dim=48 .* use \(32, 64, 128\)",
        ),
        (_bad(shape_q=(1, 4, 9, 32)), r"q \(1, 4, 9, 32\) and k/v \(1, 2, 8, 32\) must agree"),
        (_bad(v=torch.zeros(1, 2, 8, 64)), r"k \(1, 2, 8, 32\), v \(1, 2, 8, 64\)"),
        (_bad(v=torch.zeros(1, 2, 8, 32, dtype=torch.float64)), "different dtypes"),
        (_bad(window=0), "window=0 must be >= 1"),
        (_bad(cu_seqlens=torch.tensor([0, 8])), "1-D int32 tensor"),
        (_bad(cu_seqlens=torch.tensor([0, 5, 3, 8], dtype=torch.int32)), r"\[0, 5, 3, 8\] must"),
        (_bad(cu_seqlens=torch.tensor([0, 6], dtype=torch.int32)), "packed length 8"),
        (
            _bad((2, 4, 8, 32), (2, 2, 8, 32), cu_seqlens=torch.tensor([0, 8], dtype=torch.int32)),
            r"batch 1; got q \(2, 4, 8, 32\)",
        ),
        (_bad(backend="cuda"), "backend='cuda' is not allowed"),
    ],
)
def test_bad_inputs_raise_clear_errors(case, message):
    tensors, kwargs = case
    with pytest.raises(ValueError, match=message):
        attention(**tensors, **kwargs)


def test_triton_rejects_float64():
    q, k, v = _inputs(1, 2, 2, 8, 32)
    with pytest.raises(ValueError, match=r"backend='triton' takes dtypes .*; got torch.float64"):
        attention(q, k, v, backend="triton")


@pytest.mark.parametrize("capability", list(attention_triton.SHARED_MEMORY))
def test_launch_configs_fit_every_listed_device(capability):
    limit = attention_triton.shared_memory_limit(capability=capability)
    for head_dim in (32, 64, 128):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for backward in (False, True):
                config = attention_triton.launch_config(head_dim, dtype, backward, limit)
                need = attention_triton.shared_memory_bytes(
                    config["BLOCK_M"],
                    config["BLOCK_N"],
                    config["num_stages"],
                    head_dim,
                    dtype,
                    backward,
                )
                assert need <= limit, (capability, head_dim, dtype, backward, config)


def test_head_dim_128_half_forward_config_by_device():
    """The round-1 config (128 × 64, 3 stages, ~128 KiB) stays on H100 / A100 and is replaced
    where shared memory is ~100 KiB (sm_86 / sm_89)."""

    def forward(capability):
        limit = attention_triton.shared_memory_limit(capability=capability)
        config = attention_triton.launch_config(128, torch.float16, False, limit)
        return config["BLOCK_M"], config["BLOCK_N"], config["num_stages"], config["num_warps"]

    assert forward((9, 0)) == forward((8, 0)) == (128, 64, 3, 8)
    assert forward((8, 6)) == forward((8, 9)) == (64, 64, 2, 8)
    with pytest.raises(ValueError, match="no attention launch config fits 1024 bytes"):
        attention_triton.launch_config(128, torch.float16, False, 1024)


@pytest.mark.parametrize("name", ["gqa_causal", "mqa_d128", "varlen_causal"])
def test_gqa_backward_split_over_query_heads_equals_the_grouped_loop(monkeypatch, name):
    """dK/dV parallel over the group's query heads (the default for these small grids) = one
    program looping over the group (forced by GQA_SPLIT_BELOW = 0), and both = float64."""
    tensors, causal, window, cu_seqlens, grad_out = _case(name)
    assert attention_triton.split_gqa(8, 2, torch.device("cpu"))

    def fn(q, k, v):
        kwargs = {"causal": causal, "window": window, "cu_seqlens": cu_seqlens}
        return attention(q, k, v, backend="triton", **kwargs)

    split = _values_and_grads(fn, tensors, torch.float32, grad_out)
    monkeypatch.setattr(attention_triton, "GQA_SPLIT_BELOW", 0.0)
    assert not attention_triton.split_gqa(8, 2, torch.device("cpu"))
    grouped = _values_and_grads(fn, tensors, torch.float32, grad_out)
    for a, b in zip(split, grouped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    _check_against_float64(tensors, causal, window, cu_seqlens, grad_out, torch.float32)
