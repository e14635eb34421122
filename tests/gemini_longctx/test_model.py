"""gemini_longctx model and data: RoPE at long positions, streaming = full forward, the
equal-active dense baseline, tokeniser, document splits, retrieval samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.kernels.moe import MoE
from gemini_longctx.data import (
    BPETokenizer,
    Document,
    Mixture,
    copy_sample,
    pydoc_topics,
    retrieval_sample,
    split_documents,
    token_stream,
)
from gemini_longctx.model import LongContextLM, rope
from tests.gemini_longctx.tiny import tiny_config


def _rope_float64(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotary embedding written from the definition: pair (i, i + D/2) rotated by p·θ_i."""
    out = np.empty_like(x)
    half = x.shape[-1] // 2
    for t, p in enumerate(positions):
        for i in range(half):
            theta = float(p) * base ** (-i / half)
            a, b = x[..., t, i], x[..., t, i + half]
            out[..., t, i] = a * math.cos(theta) - b * math.sin(theta)
            out[..., t, i + half] = a * math.sin(theta) + b * math.cos(theta)
    return out


def test_rope_at_long_positions_matches_float64():
    x = torch.randn(1, 2, 4, 32)
    positions = torch.tensor([0, 1, 131_071, 999_999])
    expected = _rope_float64(x.double().numpy(), positions.numpy(), 500_000.0)
    got = rope(x, positions, 500_000.0)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, atol=2e-6)


def test_rope_is_relative():
    """q·k after RoPE depends only on the distance between the two positions."""
    q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)

    def score(pq: int, pk: int) -> float:
        return float((rope(q, torch.tensor([pq]), 1e4) * rope(k, torch.tensor([pk]), 1e4)).sum())

    assert score(10, 3) == pytest.approx(score(100_007, 100_000), abs=1e-3)


@pytest.mark.parametrize("ffn", ["moe", "dense"])
def test_streaming_through_the_kv_cache_equals_one_forward(ffn):
    torch.manual_seed(0)
    model = LongContextLM(tiny_config(ffn=ffn)).double().eval()
    ids = torch.randint(0, 97, (2, 37))
    with torch.no_grad():
        full = model(ids).logits
        caches = model.new_caches(2, 37)
        parts, start = [], 0
        for size in (1, 16, 5, 15):
            parts.append(model(ids[:, start : start + size], start=start, caches=caches).logits)
            start += size
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-10, rtol=1e-10)


def test_dense_baseline_has_the_active_parameters_of_the_moe():
    moe = LongContextLM(tiny_config(ffn="moe"))
    dense = LongContextLM(tiny_config(ffn="dense"))
    router = sum(b.ffn.router.weight.numel() for b in moe.blocks)
    assert moe.parameter_counts()["active"] == dense.parameter_counts()["total"] + router
    assert moe.parameter_counts()["total"] > moe.parameter_counts()["active"]
    assert all(isinstance(b.ffn, MoE) for b in moe.blocks)


def test_moe_every_places_moe_in_the_last_block_of_each_group():
    model = LongContextLM(tiny_config(layers=4, moe_every=2))
    assert [isinstance(b.ffn, MoE) for b in model.blocks] == [False, True, False, True]
    assert model(torch.randint(0, 97, (1, 8))).tokens_per_expert.shape == (2, 4)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train([d.text for d in pydoc_topics()[:40]], 600)


def test_tokenizer_round_trip_and_single_digits(tokenizer):
    text = "The special magic Paris number is: 4817203.\n\tdef f(x):  return x ** 2  # é"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    digits = tokenizer.encode("4817203")
    assert [tokenizer.decode([i]) for i in digits] == list("4817203")
    assert tokenizer.eot_id is not None and tokenizer.eot_id not in ids


def test_document_split_is_disjoint_seeded_and_per_kind():
    docs = [Document(f"p{i}", "prose", "essays", "x") for i in range(20)]
    docs += [Document(f"c{i}", "code", "stdlib", "y") for i in range(5)]
    a = split_documents(docs, 0.1, 0.2, seed=3)
    b = split_documents(docs, 0.1, 0.2, seed=3)
    names = {s: [d.name for d in a[s]] for s in a}
    assert names == {s: [d.name for d in b[s]] for s in b}
    assert sorted(sum(names.values(), [])) == sorted(d.name for d in docs)
    for split in ("val", "test"):  # every kind is represented in each held-out split
        assert {d.kind for d in a[split]} == {"prose", "code"}
    assert len([d for d in a["test"] if d.kind == "prose"]) == 4


def _period(row: np.ndarray) -> int:
    return next(p for p in range(1, len(row)) if np.array_equal(row[p:], row[:-p]))


def test_copy_sample_repeats_a_segment_of_varying_period_and_mixes_in(tokenizer):
    rng = np.random.default_rng(0)
    periods = set()
    for length in (257, 1025):
        for _ in range(5):
            sample = copy_sample(tokenizer.vocab_size, length, rng)
            assert sample.shape == (length,) and sample.max() < tokenizer.vocab_size
            period = _period(sample)
            assert 16 <= period <= length // 2
            periods.add(period)
    assert len(periods) > 5  # no fixed look-back distance solves it
    stream = token_stream(tokenizer, pydoc_topics()[:40])
    mix = Mixture(
        {"prose": stream},
        tokenizer,
        code_weight=0.0,
        retrieval_fraction=0.0,
        max_facts=1,
        seed=0,
        copy_fraction=1.0,
    )
    for row in mix.batch(4, 256).numpy():
        assert _period(row) <= 128
    mix.copy_vocab = 64  # a smaller id range: every id seen more often
    rows = mix.batch(8, 256).numpy()
    assert rows.max() < 64 and len(np.unique(rows)) > 32


def test_retrieval_sample_layout(tokenizer):
    stream = token_stream(tokenizer, pydoc_topics()[:40])
    rng = np.random.default_rng(0)
    for length in (300, 1000):
        sample, answers = retrieval_sample(stream, tokenizer, length, 4, rng)
        assert sample.shape == (length,)
        text = tokenizer.decode(sample.tolist())
        for start, stop in answers:
            value = tokenizer.decode(sample[start:stop].tolist())
            assert value.isdigit() and 5 <= len(value) <= 8
            assert text.count(f" is: {value}.") == 2  # the fact and the answer
        assert text.endswith(f" is: {tokenizer.decode(sample[start:stop].tolist())}.")
    with pytest.raises(ValueError, match="too short"):
        retrieval_sample(stream, tokenizer, 40, 4, rng)
