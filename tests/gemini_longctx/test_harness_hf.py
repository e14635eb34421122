"""The harness on a tiny random Hugging Face Llama and a BPE tokenizer trained here, offline.

The cached adapter (`HFCausalLM`) must change nothing but memory: it gives the NLL of one full
forward pass for every chunk size, and the same NIAH grid and NLL curve as `FullForwardLM`.
"""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from gemini_longctx.harness import (  # noqa: E402
    FullForwardLM,
    HFCausalLM,
    load_hf,
    needle_in_haystack,
    nll_by_position,
    stream_nll,
)

TEXT = " ".join(topics.values())[:30_000]
CITIES = ["Rome", "Lima", "Oslo", "Cairo", "Dakar"]
VOCAB = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama and a byte-level BPE with a <s> that `encode` must not add."""
    path = tmp_path_factory.mktemp("tiny_llama")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([TEXT[:8000]], trainer)
    bpe.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>").save_pretrained(
        path
    )
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(saved: Path) -> tuple:
    lm, tokenizer = load_hf(saved)
    full = FullForwardLM(lambda ids: lm.model(ids).logits, lm.vocab_size, lm.max_context)
    return lm, full, tokenizer


def test_load_hf(loaded: tuple) -> None:
    lm, _, tokenizer = loaded
    assert isinstance(lm, HFCausalLM)
    assert (lm.vocab_size, lm.max_context, tokenizer.vocab_size) == (VOCAB, 512, VOCAB)
    text = "Question: What is the special magic Oslo number?"
    ids = tokenizer.encode(text)
    assert tokenizer.tokenizer.encode(text)[1:] == ids  # the raw tokenizer adds <s>, ours not
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("adapter", [0, 1], ids=["HFCausalLM", "FullForwardLM"])
def test_stream_nll_equals_one_forward_for_any_chunk(loaded: tuple, adapter: int) -> None:
    lm = loaded[adapter]
    ids = torch.tensor(loaded[2].encode(TEXT)[:200])
    with torch.no_grad():
        reference = F.cross_entropy(
            loaded[0].model(ids[None]).logits[0, :-1], ids[1:], reduction="none"
        )
    for chunk in (1, 7, 64, 200):
        nll = stream_nll(lm.start(200), ids, chunk)
        assert nll.dtype == torch.float64 and nll.shape == (199,)
        np.testing.assert_allclose(nll.numpy(), reference.double().numpy(), atol=1e-5)


@pytest.mark.parametrize("adapter", [0, 1], ids=["HFCausalLM", "FullForwardLM"])
def test_rewind_then_refeed_equals_fresh_session(loaded: tuple, adapter: int) -> None:
    lm = loaded[adapter]
    ids = torch.tensor(loaded[2].encode(TEXT)[:90])
    session = lm.start(100)
    session.feed(ids[:40])
    session.feed(ids[40:70])
    session.rewind(25)
    assert session.length == 25
    again = session.feed(ids[70:90])
    fresh = lm.start(100)
    fresh.feed(ids[:25])
    np.testing.assert_allclose(again.numpy(), fresh.feed(ids[70:90]).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="exceeds max_len=100"):
        session.feed(ids[:60])


def test_cache_changes_nothing_but_memory(loaded: tuple) -> None:
    cached, full, tokenizer = loaded
    kwargs = dict(lengths=[192, 320], depths=3, trials=2, seed=1, chunk=32)
    grid = needle_in_haystack(cached, tokenizer, TEXT, CITIES, **kwargs)
    baseline = needle_in_haystack(full, tokenizer, TEXT, CITIES, **kwargs)
    assert grid.accuracy.shape == (3, 2)
    np.testing.assert_array_equal(grid.accuracy, baseline.accuracy)
    assert [r.answer for r in grid.trials] == [r.answer for r in baseline.trials]
    docs = [tokenizer.encode(TEXT[i : i + 3000]) for i in (0, 10_000, 20_000)]
    curve = nll_by_position(cached, docs, length=300, chunk=48)
    np.testing.assert_allclose(curve, nll_by_position(full, docs, length=300, chunk=300), atol=1e-5)
    assert curve.shape == (299,) and np.all(curve > 0)
    with pytest.raises(ValueError, match="max_context=512"):
        needle_in_haystack(cached, tokenizer, TEXT, CITIES, lengths=[1024])
