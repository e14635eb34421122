"""The long-context harness on test models whose right answers are known without the harness.

Byte-level test doubles: an ideal induction head (copies what followed the longest earlier
match of the context's suffix), a model that parses MRCR conversations, and a constant model
that records the prompts it is shown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pydoc_data.topics import topics

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit

from gemini_longctx.harness import (
    ANSWER_KINDS,
    NEEDLE,
    QUESTION,
    FullForwardLM,
    classify_answer,
    cumulative_average,
    fit_power_law,
    greedy,
    insert_needles,
    mrcr,
    multi_needle,
    needle_in_haystack,
    needle_prompt,
    nll_by_position,
    ordinal,
    plot_needle_heatmap,
    plot_nll_by_position,
    score_answer,
    stream_nll,
)
from gemini_longctx.harness.mrcr import REQUEST

TEXT = " ".join(topics.values())
HAYSTACK = TEXT[:20_000]
CITIES = ["Rome", "Lima", "Oslo", "Cairo", "Dakar", "Quito", "Hanoi", "Perth", "Turin", "Bern"]
NUL = 0  # a byte absent from every text here


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode(errors="replace")


class ByteLM:
    """`predict(context) -> next byte` evaluated at every fed position; optionally records the
    prompt of each question: the context when the first decoded NUL byte is fed back."""

    vocab_size = 256
    max_context = None

    def __init__(self, predict: Callable[[bytearray], int]) -> None:
        self.predict = predict
        self.prompts: list[bytes] = []

    def start(self, max_len: int) -> ByteSession:
        return ByteSession(self, max_len)


class ByteSession:
    def __init__(self, lm: ByteLM, max_len: int) -> None:
        self.lm, self.max_len, self.ids = lm, max_len, bytearray()

    @property
    def length(self) -> int:
        return len(self.ids)

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        assert ids.dtype == torch.int64 and ids.dim() == 1 and ids.numel() > 0
        if ids.tolist() == [NUL] and self.ids and self.ids[-1] != NUL:
            self.lm.prompts.append(bytes(self.ids))
        logits = torch.zeros(ids.numel(), 256)
        for i, token in enumerate(ids.tolist()):
            self.ids.append(token)
            logits[i, self.lm.predict(self.ids)] = 1.0
        assert len(self.ids) <= self.max_len
        return logits

    def rewind(self, length: int) -> None:
        assert 0 <= length <= len(self.ids)
        del self.ids[length:]


def induction(context: bytearray) -> int:
    """The byte after the most recent earlier occurrence of the longest matching suffix."""
    end = len(context) - 1
    lo, hi = 0, end  # the suffix of length lo occurs in context[:end]; find the longest
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if context.rfind(context[-mid:], 0, end) >= 0:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return NUL
    return context[context.rfind(context[-lo:], 0, end) + lo]


def mrcr_solver(context: bytearray) -> int:
    """Parses the conversation and continues the requested turn's text, else NUL."""
    request = context.rfind(b"User: Repeat the ")
    if request < 0:
        return NUL
    asked = re.match(rb"User: Repeat the (\d+)\w\w (.+) about (.+)\.\nModel:", context[request:])
    if asked is None:
        return NUL
    rank, kind, topic = int(asked.group(1)), asked.group(2), asked.group(3)
    turns = re.findall(rb"User: Write a (.+?) about (.+?)\.\nModel: (.*)\n", context[:request])
    texts = [text for k, t, text in turns if (k, t) == (kind, topic)]
    answer = b" " + texts[rank - 1] + b"\n"
    written = context[request + asked.end() :]
    if len(written) < len(answer) and answer.startswith(written):
        return answer[len(written)]
    return NUL


def constant(context: bytearray) -> int:
    return NUL


# --- power law (§5.1) ---


def test_fit_power_law_recovers_parameters_and_matches_scipy() -> None:
    x = np.arange(1, 4097, dtype=np.float64)
    y = 2.0 * x**-0.5 + 1.0 + np.random.default_rng(0).normal(0.0, 0.003, x.size)
    fit = fit_power_law(x, y)
    assert fit.alpha == pytest.approx(2.0, abs=0.02)
    assert fit.beta == pytest.approx(-0.5, abs=0.01)
    assert fit.gamma == pytest.approx(1.0, abs=0.005)
    (alpha, beta, gamma), _ = curve_fit(lambda x, a, b, c: a * x**b + c, x, y, p0=(1.0, -1.0, 0.0))
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((alpha, beta, gamma), rel=1e-5)
    residual = y - (alpha * x**beta + gamma)
    assert fit.r2 == pytest.approx(1 - residual @ residual / ((y - y.mean()) ** 2).sum(), abs=1e-9)
    assert 0.995 < fit.r2 < 1.0


def test_fit_power_law_exact_data_and_bad_input() -> None:
    x = np.linspace(1.0, 1000.0, 200)
    fit = fit_power_law(x, 0.7 * x**-1.3 + 2.5)
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((0.7, -1.3, 2.5), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="x must be > 0"):
        fit_power_law(np.array([0.0, 1.0, 2.0]), np.ones(3))


def test_cumulative_average() -> None:
    np.testing.assert_allclose(cumulative_average(np.array([3.0, 1.0, 2.0])), [3.0, 2.0, 2.0])


# --- NLL by position ---


def successor_forward(ids: torch.Tensor) -> torch.Tensor:
    """Puts probability 0.9 on (token + 1) mod 256, the rest spread evenly."""
    probs = torch.full((*ids.shape, 256), 0.1 / 255)
    probs.scatter_(-1, ((ids + 1) % 256)[..., None], 0.9)
    return probs.log()


def test_nll_by_position_averages_long_docs_only() -> None:
    lm = FullForwardLM(successor_forward, vocab_size=256)
    counting = [i % 256 for i in range(300)]  # every token is its predecessor + 1
    scrambled = [(7 * i) % 256 for i in range(250)]  # never is
    nll = nll_by_position(lm, [counting, scrambled, counting[:50]], length=200, chunk=37)
    expected = (-math.log(0.9) - math.log(0.1 / 255)) / 2
    assert nll.shape == (199,)
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="no doc has >= 400 tokens"):
        nll_by_position(lm, [counting], length=400, chunk=64)


def test_stream_nll_feeds_at_most_one_chunk() -> None:
    lm = FullForwardLM(successor_forward, vocab_size=256)
    session = lm.start(100)
    sizes = []
    feed = session.feed
    session.feed = lambda ids: sizes.append(ids.numel()) or feed(ids)
    nll = stream_nll(session, torch.arange(100), chunk=30)
    assert sizes == [30, 30, 30, 10]
    np.testing.assert_allclose(nll.numpy(), -math.log(0.9), rtol=1e-6)
    assert nll.dtype == torch.float64


# --- needle in a haystack (§5.2.1) ---


def test_score_answer_is_exact_match() -> None:
    assert score_answer(" 4821937.", "4821937")
    assert score_answer(" 4821937. The best thing to do", "4821937")
    assert not score_answer(" 4821938.", "4821937")
    assert not score_answer(" 48219370", "4821937")
    assert not score_answer(" none", "4821937")
    assert not score_answer("", "4821937")


def test_classify_answer_names_how_an_answer_is_wrong() -> None:
    assert classify_answer(" 4821937.", "4821937") == "correct"
    assert classify_answer(" 4821938.", "4821937") == "wrong digits"
    assert classify_answer(" 482197.\n\nQue", "4821937") == "too short"
    assert classify_answer(" 48219370", "4821937") == "too long"
    assert classify_answer("\n\n   a f", "4821937") == "no number"
    assert ANSWER_KINDS[0] == "correct"
    answers = [" 4821937", " 1", " 1234567", " 123456789", " x"]
    assert {classify_answer(a, "4821937") for a in answers} == set(ANSWER_KINDS)
    assert all(
        score_answer(a, "4821937") == (classify_answer(a, "4821937") == "correct") for a in answers
    )


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_insertion_is_token_exact(depth: float) -> None:
    tokenizer = ByteTokenizer()
    haystack = tokenizer.encode(HAYSTACK)
    prompt = needle_prompt(tokenizer, haystack, "Oslo", "1234567", depth, length=500)
    needle = tokenizer.encode(NEEDLE.format(city="Oslo", number="1234567"))
    question = tokenizer.encode(QUESTION.format(city="Oslo"))
    p, n, kept = prompt.position, len(needle), prompt.n_haystack
    assert p == round(depth * kept)
    assert prompt.ids[:p] == haystack[:p]
    assert prompt.ids[p : p + n] == needle
    assert prompt.ids[p + n : n + kept] == haystack[p:kept]
    assert prompt.ids[n + kept :] == question
    assert len(prompt.ids) + 12 == 500  # prompt and a 12-token answer fill the length


def test_insert_needles_keeps_haystack_order() -> None:
    ids, starts = insert_needles(list(range(10)), [[-1], [-2, -2], [-3]], [0.55, 0.0, 1.0])
    assert ids == [-2, -2, 0, 1, 2, 3, 4, 5, -1, 6, 7, 8, 9, -3]
    assert starts == [8, 0, 13]


def test_oracle_finds_every_needle_and_constant_finds_none() -> None:
    tokenizer, lengths = ByteTokenizer(), [300, 700, 1500]
    result = needle_in_haystack(
        ByteLM(induction), tokenizer, HAYSTACK, CITIES, lengths, depths=5, trials=2, chunk=128
    )
    assert result.accuracy.shape == (5, 3)
    np.testing.assert_array_equal(result.accuracy, 1.0)
    np.testing.assert_allclose(result.depths, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert len(result.trials) == 30 and len({r.number for r in result.trials}) > 20

    recorder = ByteLM(constant)
    missed = needle_in_haystack(
        recorder, tokenizer, HAYSTACK, CITIES, lengths, depths=5, trials=2, chunk=128
    )
    np.testing.assert_array_equal(missed.accuracy, 0.0)
    assert [(r.city, r.number) for r in missed.trials] == [
        (r.city, r.number) for r in result.trials
    ]  # the draws depend on the seed only
    expected = {
        bytes(needle_prompt(tokenizer, tokenizer.encode(HAYSTACK), *key).ids)
        for key in ((r.city, r.number, r.depth, r.length) for r in missed.trials)
    }
    assert set(recorder.prompts) == expected and len(recorder.prompts) == 30


def test_needle_draws_follow_the_seed() -> None:
    run = lambda seed: needle_in_haystack(  # noqa: E731
        ByteLM(constant), ByteTokenizer(), HAYSTACK, CITIES, [300], depths=2, trials=3, seed=seed
    )
    draws = lambda result: [(r.city, r.number) for r in result.trials]  # noqa: E731
    assert draws(run(1)) == draws(run(1)) != draws(run(2))
    assert all(re.fullmatch(r"[1-9]\d{6}", r.number) for r in run(1).trials)


def test_needle_bad_input_fails_early() -> None:
    lm, tokenizer = ByteLM(constant), ByteTokenizer()
    with pytest.raises(ValueError, match="haystack has 2000 tokens"):
        needle_in_haystack(lm, tokenizer, HAYSTACK[:2000], CITIES, [5000])
    with pytest.raises(ValueError, match="no room for haystack"):
        needle_in_haystack(lm, tokenizer, HAYSTACK, CITIES, [100])
    lm.max_context = 1000
    with pytest.raises(ValueError, match="exceeds the model's max_context=1000"):
        needle_in_haystack(lm, tokenizer, HAYSTACK, CITIES, [500, 2000])
    assert lm.prompts == []


def test_multi_needle_oracle_recalls_all_constant_none() -> None:
    tokenizer = ByteTokenizer()
    result = multi_needle(
        ByteLM(induction), tokenizer, HAYSTACK, CITIES, [1000, 2500], needles=8, trials=2
    )
    np.testing.assert_array_equal(result.recall, 1.0)
    assert len(result.needles) == 2 * 2 * 8
    for length in (1000, 2500):
        for trial in range(2):
            cities = [r.city for r in result.needles if (r.length, r.trial) == (length, trial)]
            assert len(set(cities)) == 8
    missed = multi_needle(
        ByteLM(constant), tokenizer, HAYSTACK, CITIES, [1000, 2500], needles=8, trials=2
    )
    np.testing.assert_array_equal(missed.recall, 0.0)
    with pytest.raises(ValueError, match="needles must be in"):
        multi_needle(ByteLM(constant), tokenizer, HAYSTACK, CITIES, [1000], needles=11)


def test_greedy_stops_before_a_stop_token() -> None:
    session = FullForwardLM(successor_forward, vocab_size=256).start(50)
    assert greedy(session, [10, 11], max_new_tokens=5) == [12, 13, 14, 15, 16]
    session.rewind(0)
    assert greedy(session, [10, 11], max_new_tokens=5, stop={14}) == [12, 13]


# --- MRCR (§5.2.2) ---


def test_ordinal() -> None:
    names = [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)]
    assert names == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st",
        "111th", "112th",
    ]  # fmt: skip


def test_mrcr_solver_scores_one_constant_zero() -> None:
    tokenizer, lengths = ByteTokenizer(), [600, 1500]
    solved = mrcr(ByteLM(mrcr_solver), tokenizer, TEXT, lengths, trials=4, seed=3)
    np.testing.assert_allclose(solved.score, 1.0)
    assert any(r.rank > 1 for r in solved.trials)  # the rank, not just the topic, matters
    recorder = ByteLM(constant)
    missed = mrcr(recorder, tokenizer, TEXT, lengths, trials=4, seed=3)
    assert missed.score.max() < 0.05
    assert [r.target for r in missed.trials] == [r.target for r in solved.trials]
    assert len(recorder.prompts) == 8
    for prompt, record in zip(recorder.prompts, missed.trials, strict=True):
        request = REQUEST.format(ordinal=ordinal(record.rank), kind=record.kind, topic=record.topic)
        assert prompt.endswith(request.encode())
        assert prompt.count(b"\nModel: ") == record.turns
        assert len(prompt) + len(b" " + record.target.encode()) + 8 <= record.length


# --- plots ---


def test_plots_write_pngs(tmp_path) -> None:
    result = needle_in_haystack(
        ByteLM(induction), ByteTokenizer(), HAYSTACK, CITIES, [300, 600], depths=3
    )
    result.accuracy[0, 0] = 0.0  # one missed cell
    image = plt.imread(plot_needle_heatmap(result, tmp_path / "niah.png"))[..., :3]
    green = np.abs(image - [0x2C / 255, 0xA0 / 255, 0x2C / 255]).sum(-1) < 0.05
    red = np.abs(image - [0xD6 / 255, 0x27 / 255, 0x28 / 255]).sum(-1) < 0.05
    assert green.sum() > 3 * red.sum() > 0  # 5 found cells, 1 missed
    x = np.arange(1, 1001)
    nll = cumulative_average(3.0 * x**-0.3 + 1.0)
    path = plot_nll_by_position(nll, tmp_path / "nll.png", fit_power_law(x, nll))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
