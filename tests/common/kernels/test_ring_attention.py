"""Ring attention: 2 and 4 gloo processes on the CPU vs single-process attention, values and
gradients; LSE merging; the single-process fallback."""

import pytest
import torch

from common.distributed import spawn_local
from common.kernels.attention import attention, ring_attention
from common.kernels.attention.reference import attention_forward
from common.kernels.attention.ring import merge_partials

CHUNK = 16  # tokens per rank
# (causal, heads, kv_heads, backend, dtype, atol)
CONFIGS = [
    (False, 4, 2, "reference", torch.float64, 1e-10),
    (True, 2, 1, "reference", torch.float64, 1e-10),
]
TRITON_CONFIG = (True, 4, 2, "triton", torch.float32, 1e-5)  # interpreter: world 2 only


def _full_problem(world, heads, kv_heads, seed=0):
    generator = torch.Generator().manual_seed(seed)
    seq = world * CHUNK
    shapes = [(2, heads, seq, 32), (2, kv_heads, seq, 32), (2, kv_heads, seq, 32)]
    q, k, v, grad_out = [
        torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes + shapes[:1]
    ]
    return q, k, v, grad_out


def _worst_errors(rank, world, config):
    """Max |ring - single process| of out, dq, dk, dv on this rank's chunk."""
    causal, heads, kv_heads, backend, dtype, _ = config
    q, k, v, grad_out = _full_problem(world, heads, kv_heads)
    chunk = slice(rank * CHUNK, (rank + 1) * CHUNK)
    local = [t[:, :, chunk].to(dtype).requires_grad_() for t in (q, k, v)]
    out = ring_attention(*local, causal=causal, backend=backend)
    (out * grad_out[:, :, chunk].to(dtype)).sum().backward()

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    truth = attention(*full, causal=causal)
    (truth * grad_out).sum().backward()
    pairs = [(out, truth)] + [(a.grad, b.grad) for a, b in zip(local, full, strict=True)]
    return [(got.double() - want[:, :, chunk]).abs().max().item() for got, want in pairs]


def _worker(rank, world):
    configs = CONFIGS + ([TRITON_CONFIG] if world == 2 else [])
    errors = [_worst_errors(rank, world, config) for config in configs]
    uneven = torch.zeros(1, 2, CHUNK + rank, 32)
    try:
        ring_attention(uneven, uneven, uneven)
        message = ""
    except ValueError as error:
        message = str(error)
    return errors, message


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_matches_single_process(world):
    results = spawn_local(_worker, world)
    configs = CONFIGS + ([TRITON_CONFIG] if world == 2 else [])
    for rank in range(world):
        errors, message = results[rank]
        for config, worst in zip(configs, errors, strict=True):
            assert max(worst) < config[-1], (rank, config, worst)
        assert "equal chunks on every rank" in message


def test_merging_two_halves_by_lse_equals_attention_over_all_keys():
    q, k, v, _ = _full_problem(1, 2, 2)
    kwargs = {"causal": False, "window": None, "scale": 0.3, "cu_seqlens": None}
    out, lse = attention_forward(q, k, v, **kwargs)
    half = CHUNK // 2
    a = attention_forward(q, k[:, :, :half], v[:, :, :half], **kwargs)
    b = attention_forward(q, k[:, :, half:], v[:, :, half:], **kwargs)
    merged, merged_lse = merge_partials(*a, *b)
    torch.testing.assert_close(merged, out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(merged_lse, lse, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "backend, dtype, atol", [("reference", torch.float64, 1e-12), ("triton", torch.float32, 1e-5)]
)
def test_without_a_process_group_it_is_plain_attention(backend, dtype, atol):
    """World size 1: the ring's own forward and backward (FA-2 backward formulas given O and
    LSE, float32 per-block gradients) against `attention` differentiated by autograd."""
    q, k, v, grad_out = _full_problem(1, 4, 2)
    for causal in (False, True):
        results = []
        for fn in (ring_attention, attention):
            leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
            out = fn(*leaves, causal=causal, backend=backend)
            (out * grad_out.to(dtype)).sum().backward()
            results.append([out] + [t.grad for t in leaves])
        for got, want in zip(*results, strict=True):
            assert got.dtype == dtype
            torch.testing.assert_close(got, want, atol=atol, rtol=atol)
