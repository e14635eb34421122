"""gemini_longctx.eval: our model behind the harness interface (KV-cache streaming gives the
harness the same answers as a full forward), the real entry point on a smoke run, and config
errors before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gemini_longctx import harness
from gemini_longctx.data import BPETokenizer, pydoc_topics
from gemini_longctx.eval import CITIES, ModelLM, city_split
from gemini_longctx.model import LongContextLM
from tests.entry_points import run_module
from tests.gemini_longctx.tiny import tiny_config


def test_streaming_model_lm_equals_full_forward_in_the_harness():
    topics = pydoc_topics()[:30]
    tokenizer = BPETokenizer.train([d.text for d in topics], 400)
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=tokenizer.vocab_size, max_context=512)
    model = LongContextLM(cfg).double()
    streaming = ModelLM(model)
    full = harness.FullForwardLM(streaming.forward, tokenizer.vocab_size, max_context=512)
    haystack = "\n".join(d.text for d in topics)
    docs = [tokenizer.encode(d.text) for d in topics]
    a = harness.nll_by_position(streaming, docs, 300, chunk=64)
    b = harness.nll_by_position(full, docs, 300, chunk=64)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    grids = [
        harness.needle_in_haystack(lm, tokenizer, haystack, CITIES, [200, 400], depths=3, chunk=96)
        for lm in (streaming, full)
    ]
    assert [t.answer for t in grids[0].trials] == [t.answer for t in grids[1].trials]


def test_city_splits_are_disjoint_halves():
    val, test = city_split("val"), city_split("test")
    assert not set(val) & set(test) and len(val) + len(test) == len(CITIES)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    run_module("gemini_longctx.train", "experiment=smoke", f"hydra.run.dir={run_dir}")
    return run_dir


def test_eval_entry_point_on_a_smoke_run(smoke_run, tmp_path):
    out = run_module(
        "gemini_longctx.eval",
        f"run={smoke_run}",
        "lengths=[256,512]",
        "depths=3",
        "trials=1",
        "nll.length=512",
        "multi_needle.lengths=[512]",
        "multi_needle.needles=3",
        "mrcr.lengths=[512]",
        "mrcr.trials=2",
        "memory.lengths=[256,512]",
        "memory.naive_max=512",
        "threads=1",
        f"figures={tmp_path / 'figures'}",
    ).stdout
    for heading in ("NLL by position", "Needle in a haystack", "Multi-needle", "MRCR", "Memory"):
        assert heading in out
    niah = json.loads((smoke_run / "eval" / "niah.json").read_text())
    assert np.asarray(niah["accuracy"]).shape == (3, 2)
    assert {t["city"] for t in niah["trials"]} <= set(city_split("test"))
    for name in ("niah.png", "nll_prose.png", "memory.png"):
        assert (tmp_path / "figures" / name).exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=perplexity"], "task="),
        (["task=niah", "lengths=[1024]"], "beyond the model's trained context 512"),
        (["task=niah", "split=train"], "split="),
        (["task=niah", "depths=0"], "depths="),
        (["task=mrcr", "mrcr.lengths=[4096]"], "mrcr.lengths"),
    ],
)
def test_bad_eval_config_fails_before_work(smoke_run, overrides, message):
    result = run_module("gemini_longctx.eval", f"run={smoke_run}", *overrides, check=False)
    assert result.returncode != 0 and message in result.stderr


def test_beyond_context_runs_when_asked(smoke_run, tmp_path):
    out = run_module(
        "gemini_longctx.eval",
        f"run={smoke_run}",
        "task=niah",
        "lengths=[768]",
        "depths=2",
        "trials=1",
        "allow_beyond_context=true",
        f"output={tmp_path}",
    ).stdout
    assert "768 (beyond training)" in out
