"""Needle in a haystack and multi-needle recall (report §5.2.1, Fig. 1 / 9 / 10).

The needle "The special magic {city} number is: {number}." (a 7-digit number, as in the public
Kamradt harness) is inserted token-exactly into an essay haystack at a given depth; the model is
then asked for the number. Our models are base LMs, not instruction-tuned, so the question is a
completion prompt that ends where the number should follow ("... number is:"), and the answer
is scored by exact match on the first run of digits of a short greedy continuation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gemini_longctx.harness.lm import LM, Session, Tokenizer, check_context, greedy, prefill

NEEDLE = "The special magic {city} number is: {number}."
QUESTION = (
    "\n\nQuestion: What is the special magic {city} number?\n"
    "Answer: The special magic {city} number is:"
)


def random_number(rng: np.random.Generator) -> str:
    """A 7-digit number without a leading zero, as the public harness draws it."""
    return str(rng.integers(10**6, 10**7))


ANSWER_KINDS = ("correct", "wrong digits", "too short", "too long", "no number")


def classify_answer(answer: str, number: str) -> str:
    """Which of ANSWER_KINDS an answer is, judged on its first run of digits: exact, the
    needle's length with other digits, shorter or longer (a dropped or repeated digit), or no
    digits at all (the model went on with the haystack)."""
    digits = re.search(r"\d+", answer)
    if digits is None:
        return "no number"
    found = digits.group()
    if found == number:
        return "correct"
    if len(found) == len(number):
        return "wrong digits"
    return "too short" if len(found) < len(number) else "too long"


def score_answer(answer: str, number: str) -> bool:
    """Binary exact match: the first run of digits in `answer` is `number`."""
    return classify_answer(answer, number) == "correct"


def insert_needles(
    haystack: Sequence[int], needles: Sequence[Sequence[int]], depths: Sequence[float]
) -> tuple[list[int], list[int]]:
    """Insert each needle's ids at haystack position round(depth · len(haystack)).

    Returns the ids and each needle's first index in them; haystack tokens keep their order and
    needles at equal positions keep theirs.
    """
    if len(needles) != len(depths):
        raise ValueError(f"{len(needles)} needles but {len(depths)} depths")
    if any(not 0.0 <= depth <= 1.0 for depth in depths):
        raise ValueError(f"depths must be in [0, 1], got {list(depths)}")
    cuts = [round(depth * len(haystack)) for depth in depths]
    order = sorted(range(len(needles)), key=lambda k: cuts[k])
    ids: list[int] = []
    starts = [0] * len(needles)
    done = 0
    for k in order:
        ids.extend(haystack[done : cuts[k]])
        done = cuts[k]
        starts[k] = len(ids)
        ids.extend(needles[k])
    ids.extend(haystack[done:])
    return ids, starts


def haystack_budget(available: int, length: int, reserved: int) -> int:
    """Haystack tokens that fit in `length` next to `reserved` needle/question/answer tokens."""
    n_haystack = length - reserved
    if n_haystack < 1:
        raise ValueError(
            f"length {length} leaves no room for haystack ({reserved} tokens reserved)"
        )
    if n_haystack > available:
        raise ValueError(
            f"the haystack has {available} tokens, length {length} needs {n_haystack}: "
            "pass a longer text"
        )
    return n_haystack


@dataclass(frozen=True)
class NeedlePrompt:
    """Haystack (cut to `n_haystack` tokens) with the needle at `position`, then the question."""

    ids: list[int]
    position: int
    n_haystack: int


def needle_prompt(
    tokenizer: Tokenizer,
    haystack_ids: Sequence[int],
    city: str,
    number: str,
    depth: float,
    length: int,
    max_new_tokens: int = 12,
) -> NeedlePrompt:
    """The single-needle prompt; it and `max_new_tokens` answer tokens fit in `length`."""
    needle = tokenizer.encode(NEEDLE.format(city=city, number=number))
    question = tokenizer.encode(QUESTION.format(city=city))
    reserved = len(needle) + len(question) + max_new_tokens
    n_haystack = haystack_budget(len(haystack_ids), length, reserved)
    context, (position,) = insert_needles(haystack_ids[:n_haystack], [needle], [depth])
    return NeedlePrompt(context + question, position, n_haystack)


@dataclass(frozen=True)
class NeedleTrial:
    """One needle: where it was, what was asked, what the model answered."""

    length: int
    depth: float
    trial: int
    city: str
    number: str
    position: int
    answer: str
    correct: bool


@dataclass(frozen=True)
class NeedleResult:
    """Accuracy on a (len(depths), len(lengths)) grid, the mean over trials of each cell."""

    lengths: list[int]
    depths: np.ndarray
    accuracy: np.ndarray
    trials: list[NeedleTrial]


@dataclass(frozen=True)
class MultiNeedleResult:
    """Fraction of needles recovered at each length, over all needles of all trials."""

    lengths: list[int]
    recall: np.ndarray
    needles: list[NeedleTrial]


def _check_args(
    lm: LM,
    tokenizer: Tokenizer,
    cities: Sequence[str],
    lengths: Sequence[int],
    trials: int,
    max_new_tokens: int,
    chunk: int,
) -> None:
    if not lengths or min(lengths) < 1 or len(set(lengths)) != len(lengths):
        raise ValueError(f"lengths must be distinct positive ints, got {list(lengths)}")
    check_context(lm, max(lengths))
    if not cities:
        raise ValueError("cities must not be empty")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if max_new_tokens < 1 or chunk < 1:
        raise ValueError(f"max_new_tokens and chunk must be >= 1, got {max_new_tokens}, {chunk}")
    if tokenizer.vocab_size > lm.vocab_size:
        raise ValueError(
            f"tokenizer vocab_size {tokenizer.vocab_size} > model vocab_size {lm.vocab_size}"
        )


def _ask(
    session: Session,
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    number: str,
    max_new_tokens: int,
    chunk: int,
) -> tuple[str, bool]:
    answer = tokenizer.decode(greedy(session, prompt, max_new_tokens, chunk=chunk))
    return answer, score_answer(answer, number)


def needle_in_haystack(
    lm: LM,
    tokenizer: Tokenizer,
    haystack: str,
    cities: Sequence[str],
    lengths: Sequence[int],
    depths: int = 11,
    trials: int = 1,
    seed: int = 0,
    max_new_tokens: int = 12,
    chunk: int = 1024,
) -> NeedleResult:
    """Single-needle accuracy over `depths` evenly spaced depths in [0, 1] × `lengths` (Fig. 1).

    A prompt and its `max_new_tokens` answer tokens fit in its length; the haystack is cut to
    fill the rest. Each (length, depth, trial) draws a city from `cities` and a number from a
    Generator seeded with `seed`. The haystack before the needle is the same tokens in every
    prompt, so one session holds it: queries run in order of needle position, each feeding only
    the haystack between the previous needle position and its own, then its needle, the rest of
    its haystack and the question, and rewinding afterwards.
    """
    _check_args(lm, tokenizer, cities, lengths, trials, max_new_tokens, chunk)
    if depths < 1:
        raise ValueError(f"depths must be >= 1, got {depths}")
    rng = np.random.default_rng(seed)
    haystack_ids = tokenizer.encode(haystack)
    grid = np.linspace(0.0, 1.0, depths)
    draws = []
    for col, length in enumerate(lengths):
        for row, depth in enumerate(grid):
            for trial in range(trials):
                city, number = cities[rng.integers(len(cities))], random_number(rng)
                args = (tokenizer, haystack_ids, city, number, float(depth), length, max_new_tokens)
                draws.append((needle_prompt(*args).position, row, col, trial, args))

    session = lm.start(max(lengths))
    held = 0  # the session holds haystack_ids[:held]
    accuracy = np.zeros((depths, len(lengths)))
    records = {}
    for position, row, col, trial, args in sorted(draws, key=lambda draw: draw[0]):
        if position > held:
            prefill(session, haystack_ids[held:position], chunk)
            held = position
        # rebuilt, not kept from the first pass: all cells' prompts need not fit in memory
        suffix = needle_prompt(*args).ids[position:]
        _, _, city, number, depth, length, _ = args
        answer, correct = _ask(session, tokenizer, suffix, number, max_new_tokens, chunk)
        session.rewind(held)
        accuracy[row, col] += correct / trials
        records[col, row, trial] = NeedleTrial(
            length, depth, trial, city, number, position, answer, correct
        )
    return NeedleResult(list(lengths), grid, accuracy, [records[k] for k in sorted(records)])


def multi_needle(
    lm: LM,
    tokenizer: Tokenizer,
    haystack: str,
    cities: Sequence[str],
    lengths: Sequence[int],
    needles: int = 100,
    trials: int = 1,
    seed: int = 0,
    max_new_tokens: int = 12,
    chunk: int = 1024,
) -> MultiNeedleResult:
    """Recall of `needles` needles (distinct cities, seeded uniform depths) in one haystack.

    The report hides 100 needles and asks for all of them (§5.2.1, Fig. 10); here each city is
    asked separately: the haystack with its needles is prefilled once, and the session is
    rewound to its end before each question.
    """
    _check_args(lm, tokenizer, cities, lengths, trials, max_new_tokens, chunk)
    if not 1 <= needles <= len(cities):
        raise ValueError(f"needles must be in [1, {len(cities)}] (one city each), got {needles}")
    rng = np.random.default_rng(seed)
    haystack_ids = tokenizer.encode(haystack)
    plans = []
    for col, length in enumerate(lengths):
        for trial in range(trials):
            chosen = [cities[i] for i in rng.choice(len(cities), needles, replace=False)]
            numbers = [random_number(rng) for _ in chosen]
            depths = rng.random(needles).tolist()
            needle_ids = [
                tokenizer.encode(NEEDLE.format(city=c, number=n))
                for c, n in zip(chosen, numbers, strict=True)
            ]
            questions = [tokenizer.encode(QUESTION.format(city=c)) for c in chosen]
            reserved = sum(map(len, needle_ids)) + max(map(len, questions)) + max_new_tokens
            n_haystack = haystack_budget(len(haystack_ids), length, reserved)
            plans.append((col, trial, chosen, numbers, depths, needle_ids, questions, n_haystack))

    session = lm.start(max(lengths))
    records = []
    recall = np.zeros(len(lengths))
    for col, trial, chosen, numbers, depths, needle_ids, questions, n_haystack in plans:
        context, starts = insert_needles(haystack_ids[:n_haystack], needle_ids, depths)
        session.rewind(0)
        prefill(session, context, chunk)
        for city, number, depth, start, question in zip(
            chosen, numbers, depths, starts, questions, strict=True
        ):
            answer, correct = _ask(session, tokenizer, question, number, max_new_tokens, chunk)
            session.rewind(len(context))
            records.append(
                NeedleTrial(lengths[col], depth, trial, city, number, start, answer, correct)
            )
            recall[col] += correct / (needles * trials)
    return MultiNeedleResult(list(lengths), recall, records)
