"""MRCR-style multi-round co-reference resolution (report §5.2.2, Fig. 11).

A long synthetic conversation asks for many pieces of writing ("Write a poem about penguins")
whose kinds and topics repeat; the last request asks the model to repeat one of them by its
rank among those of the same kind and topic ("the 2nd poem about penguins"), and the output is
scored against it with difflib.SequenceMatcher's ratio, as in the report. Simplified for base
LMs: no random string to prepend to the answer, and each piece is a distinct sentence of the
given corpus rather than model-written text.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gemini_longctx.harness.lm import LM, Tokenizer, check_context, greedy

KINDS = ("poem", "riddle", "story", "limerick")
TOPICS = ("penguins", "the moon", "bread")
TURN = "User: Write a {kind} about {topic}.\nModel: {text}\n"
REQUEST = "User: Repeat the {ordinal} {kind} about {topic}.\nModel:"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def sentences(corpus: str) -> list[str]:
    """The corpus's distinct sentences, whitespace collapsed to single spaces, in order."""
    found = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", corpus))
    return list(dict.fromkeys(s for s in found if s))


@dataclass(frozen=True)
class MRCRTrial:
    """One conversation: the requested piece, what the model wrote, their similarity."""

    length: int
    trial: int
    turns: int
    kind: str
    topic: str
    rank: int
    target: str
    output: str
    ratio: float


@dataclass(frozen=True)
class MRCRResult:
    """Mean SequenceMatcher ratio at each length over the trials."""

    lengths: list[int]
    score: np.ndarray
    trials: list[MRCRTrial]


def _conversation(
    rng: np.random.Generator,
    tokenizer: Tokenizer,
    texts: list[str],
    kinds: Sequence[str],
    topics: Sequence[str],
    budget: int,
) -> tuple[list[tuple[str, str, str, list[int]]], int, int, list[int]]:
    """Turns that fill `budget` tokens with the request; returns turns, target, rank, request.

    The target is drawn among the turns whose (kind, topic) occurs more than once, where there are
    any, so that the rank has to be resolved; turns are dropped from the end (or the start, if
    the target is last) until the request fits.
    """
    turns, used = [], 0
    for index in rng.permutation(len(texts)):
        kind, topic = kinds[rng.integers(len(kinds))], topics[rng.integers(len(topics))]
        ids = tokenizer.encode(TURN.format(kind=kind, topic=topic, text=texts[index]))
        if used + len(ids) > budget:
            break
        turns.append((kind, topic, texts[index], ids))
        used += len(ids)
    else:
        raise ValueError(f"the corpus's {len(texts)} usable sentences do not fill {budget} tokens")
    if not turns:
        raise ValueError(f"{budget} tokens leave no room for a single turn")
    counts = Counter(turn[:2] for turn in turns)
    repeated = [i for i, turn in enumerate(turns) if counts[turn[:2]] > 1]
    candidates = repeated or list(range(len(turns)))
    target = candidates[rng.integers(len(candidates))]
    while True:
        kind, topic = turns[target][:2]
        rank = sum(turn[:2] == (kind, topic) for turn in turns[: target + 1])
        request = tokenizer.encode(REQUEST.format(ordinal=ordinal(rank), kind=kind, topic=topic))
        if used + len(request) <= budget:
            return turns, target, rank, request
        if len(turns) == 1:
            raise ValueError(f"{budget} tokens leave no room for a turn and the request")
        drop = len(turns) - 1 if target != len(turns) - 1 else 0
        used -= len(turns.pop(drop)[3])
        target -= drop < target


def mrcr(
    lm: LM,
    tokenizer: Tokenizer,
    corpus: str,
    lengths: Sequence[int],
    trials: int = 1,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    topics: Sequence[str] = TOPICS,
    max_text_tokens: int = 48,
    extra_tokens: int = 8,
    chunk: int = 1024,
) -> MRCRResult:
    """MRCR-style score at each context length (conversation + request + answer <= length).

    Pieces are corpus sentences of at most `max_text_tokens` tokens, each used once per
    conversation; the answer is decoded greedily for its target's token count + `extra_tokens`
    and cut at the first newline (the end of a turn) before scoring.
    """
    if not lengths or min(lengths) < 1 or len(set(lengths)) != len(lengths):
        raise ValueError(f"lengths must be distinct positive ints, got {list(lengths)}")
    check_context(lm, max(lengths))
    if trials < 1 or chunk < 1 or extra_tokens < 0 or max_text_tokens < 1:
        raise ValueError(
            f"need trials, chunk, max_text_tokens >= 1 and extra_tokens >= 0, got {trials}, "
            f"{chunk}, {max_text_tokens}, {extra_tokens}"
        )
    if not kinds or not topics:
        raise ValueError("kinds and topics must not be empty")
    texts = [s for s in sentences(corpus) if len(tokenizer.encode(" " + s)) <= max_text_tokens]
    if not texts:
        raise ValueError(f"the corpus has no sentence of <= {max_text_tokens} tokens")
    rng = np.random.default_rng(seed)
    plans = []
    for col, length in enumerate(lengths):
        budget = length - max_text_tokens - extra_tokens  # room left for the answer
        for trial in range(trials):
            plans.append((col, trial, _conversation(rng, tokenizer, texts, kinds, topics, budget)))

    session = lm.start(max(lengths))
    score = np.zeros(len(lengths))
    records = []
    for col, trial, (turns, target, rank, request) in plans:
        kind, topic, text, _ = turns[target]
        prompt = [token for turn in turns for token in turn[3]] + request
        session.rewind(0)
        max_new = len(tokenizer.encode(" " + text)) + extra_tokens
        decoded = tokenizer.decode(greedy(session, prompt, max_new, chunk=chunk))
        output = decoded.split("\n", 1)[0].strip()
        ratio = difflib.SequenceMatcher(None, output, text).ratio()
        score[col] += ratio / trials
        records.append(
            MRCRTrial(lengths[col], trial, len(turns), kind, topic, rank, text, output, ratio)
        )
    return MRCRResult(list(lengths), score, records)
