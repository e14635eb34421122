"""bench.s4rl at tiny sizes: every model is timed at every length with finite numbers, the tables
and the plot are written, and the Transformer's KV-cache decoding equals its full-context pass."""

import math

import torch

from bench.s4rl import (
    CausalBlock,
    acting_timings,
    build_models,
    plot,
    slope,
    table,
    training_timings,
)
from common.kernels.attention import KVCache

CPU = torch.device("cpu")
LENGTHS = (16, 32)


def test_tables_cover_every_model_with_finite_numbers(tmp_path):
    torch.manual_seed(0)
    models = build_models(32, CPU)
    training = training_timings(models, 2, 32, LENGTHS, 1, CPU)
    acting = acting_timings(models, 2, 32, LENGTHS, 1, CPU)
    assert [(t.model, t.length) for t in training] == [(m, n) for n in LENGTHS for m in models]
    stepping = [m for m in models if "fused" not in m]
    assert [(t.model, t.length) for t in acting] == [(m, n) for n in LENGTHS for m in stepping]
    for t in training + acting:
        assert math.isfinite(t.seconds) and t.seconds > 0, t
    assert all(t.memory > 0 for t in training)
    assert math.isfinite(slope(training, "Transformer, full context"))
    for text, rows in ((table(training, "T", "MiB"), training), (table(acting, "t"), acting)):
        lines = text.splitlines()
        assert len(lines) == 2 + len(rows) and "nan" not in text and "skipped" not in text
    plot(training, acting, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_large_attention_is_skipped():
    models = {"S5": build_models(32, CPU)["S5"]} | {
        "Transformer": torch.nn.ModuleList([CausalBlock(32, 1)])
    }
    timings = training_timings(models, 2, 32, (16,), 1, CPU, max_attention_bytes=100)
    assert [t.seconds is None for t in timings] == [False, True]
    assert "| 16 | Transformer | skipped |" in table(timings, "T", "MiB")


def test_kv_cache_decoding_matches_the_full_causal_pass():
    torch.manual_seed(0)
    block, x = CausalBlock(64, 2).double(), torch.randn(3, 8, 64, dtype=torch.float64)
    cache = KVCache.allocate(3, 2, 8, 32, dtype=torch.float64)
    decoded = torch.stack([block.decode(x[:, t], cache) for t in range(8)], 1)
    torch.testing.assert_close(decoded, block(x))
