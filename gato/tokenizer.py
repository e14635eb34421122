"""Gato's tokenisation and sequencing (Reed et al. 2022, §2.1; App. B).

Every modality becomes integers of one shared vocabulary (`Vocab`):

- text: a subword tokenizer (SentencePiece, 32,000 subwords in the paper; here a byte-level BPE
  of `text_size` ids trained offline) → ids [0, V_text);
- discrete values (Atari buttons, integers), flattened row-major → ids [0, 1024), the same ids as
  text, as in the paper;
- continuous values (proprioception, torques), flattened row-major, mu-law companded (eq. 1),
  clipped to [-1, 1], put in 1024 uniform bins and shifted to [V_text, V_text + 1024);
- images: non-overlapping 16 × 16 patches in raster order, pixels normalised to [-1, 1] and
  divided by √16; patches are embedded by a ResNet block (gato.embedding), not looked up, and
  never predicted.

An agent timestep is [observation tokens] '|' [action tokens], the entries of an observation in
lexicographic order of their keys (§2.1, "canonical sequence ordering"); episodes are timesteps
in time order.
"""

from __future__ import annotations

import importlib
import math
import pydoc_data.topics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEXT_VOCAB = 32000  # SentencePiece subwords of the paper tier (§2.1)
NUM_BINS = 1024  # uniform bins of a continuous value (§2.1)
DISCRETE_VOCAB = 1024  # discrete values are ids [0, 1024) (§2.1)
MU, M = 100.0, 256.0  # mu-law parameters (eq. 1)
PATCH = 16  # image patch side (§2.1)
LOCAL_POSITIONS = 512  # observation token indices per timestep ("a large value like 512", App. C.3)
EOT = "<|endoftext|>"


@dataclass(frozen=True)
class Vocab:
    """The id layout of §2.1 for a text vocabulary of `text_size` ids.

    text [0, V), discrete values [0, 1024) (shared with text), continuous values [V, V + 1024),
    then the separator '|' at V + 1024; `size` = V + 1025. End of text is the text tokenizer's own
    id inside [0, V), as SentencePiece's </s> is one of its 32,000."""

    text_size: int = TEXT_VOCAB

    def __post_init__(self) -> None:
        if self.text_size < DISCRETE_VOCAB:
            raise ValueError(
                f"text_size={self.text_size} is not valid: discrete values share the ids "
                f"[0, {DISCRETE_VOCAB}) with text, so text_size must be >= {DISCRETE_VOCAB}"
            )

    @property
    def text(self) -> range:
        return range(self.text_size)

    @property
    def discrete(self) -> range:
        return range(DISCRETE_VOCAB)

    @property
    def continuous(self) -> range:
        return range(self.text_size, self.text_size + NUM_BINS)

    @property
    def separator(self) -> int:
        return self.text_size + NUM_BINS

    @property
    def size(self) -> int:
        return self.separator + 1


def mu_law_encode(x: torch.Tensor, mu: float = MU, m: float = M) -> torch.Tensor:
    """F(x) = sgn(x) · log(|x| μ + 1) / log(M μ + 1)   (eq. 1): maps [-M, M] onto [-1, 1]."""
    return torch.sign(x) * torch.log1p(x.abs() * mu) / math.log1p(m * mu)


def mu_law_decode(y: torch.Tensor, mu: float = MU, m: float = M) -> torch.Tensor:
    """F⁻¹(y) = sgn(y) · ((M μ + 1)^|y| − 1) / μ."""
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(m * mu)) / mu


def tokenize_continuous(
    x: torch.Tensor | Sequence, vocab: Vocab, compand: bool = True
) -> torch.Tensor:
    """Values (any shape) → int64 ids (n,) in `vocab.continuous` (§2.1).

    Row-major flatten, F of eq. 1 if `compand` (the paper compands values "if not already" in
    [-1, 1]: pass False for those, e.g. actions), clip to [-1, 1], 1024 uniform bins of width
    2/1024 (−1 is the first bin, +1 the last), shifted by V_text."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if x.isnan().any():
        raise ValueError("continuous values contain NaN: allowed are finite or ±inf values")
    y = (mu_law_encode(x) if compand else x).clamp(-1.0, 1.0)
    bins = ((y + 1.0) / 2.0 * NUM_BINS).floor().long().clamp(max=NUM_BINS - 1)
    return bins + vocab.text_size


def detokenize_continuous(
    ids: torch.Tensor | Sequence[int], vocab: Vocab, compand: bool = True
) -> torch.Tensor:
    """Continuous-value ids → float32 values at the bin centres (through F⁻¹ if `compand`), so the
    round trip errs by at most half a bin, 1/1024, in the companded space."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    allowed = vocab.continuous
    bad = (ids < allowed.start) | (ids >= allowed.stop)
    if bad.any():
        raise ValueError(
            f"id {int(ids[bad][0])} is not a continuous-value id: allowed "
            f"[{allowed.start}, {allowed.stop})"
        )
    y = (ids - vocab.text_size).double().add(0.5) * (2.0 / NUM_BINS) - 1.0
    return (mu_law_decode(y) if compand else y).float()


def tokenize_discrete(x: torch.Tensor | Sequence) -> torch.Tensor:
    """Integers (any shape) in [0, 1024) → int64 ids (n,), flattened row-major (§2.1)."""
    x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"discrete values must be integers, got dtype {x.dtype}")
    x = x.reshape(-1).long()
    bad = (x < 0) | (x >= DISCRETE_VOCAB)
    if bad.any():
        raise ValueError(
            f"discrete value {int(x[bad][0])} is out of range: allowed [0, {DISCRETE_VOCAB})"
        )
    return x


class TextTokenizer:
    """Byte-level BPE (`tokenizers`) standing in for the paper's SentencePiece (§2.1): ids
    [0, vocab_size), <|endoftext|> (`eot_id`) among them; every string round-trips exactly."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        eot_id = tokenizer.token_to_id(EOT)
        if eot_id is None:
            raise ValueError(f"the tokenizer has no {EOT} token")
        self.eot_id: int = eot_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} is not a text id: allowed [0, {self.vocab_size})")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)))


def train_text_tokenizer(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Train a byte-level BPE of exactly `vocab_size` ids (256 byte tokens, <|endoftext|>, and
    merges) on `texts`, offline."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(
            f"vocab_size={vocab_size} is not valid: at least {len(alphabet) + 1} "
            f"(the {len(alphabet)} byte tokens and {EOT})"
        )
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, got one str")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the corpus gave only {tok.get_vocab_size()} of vocab_size={vocab_size} tokens: "
            "train on more text or ask for fewer tokens"
        )
    return TextTokenizer(tok)


_DOCSTRING_MODULES = (
    "argparse",
    "csv",
    "difflib",
    "doctest",
    "heapq",
    "inspect",
    "json",
    "pdb",
    "pickle",
    "pydoc",
    "re",
    "sqlite3",
    "string",
    "subprocess",
    "typing",
    "unittest",
)


def offline_text(max_chars: int) -> list[str]:
    """Documents of English prose shipped with Python itself (no download), at most `max_chars`
    characters in all: the docstrings of a few standard-library modules, then the documentation
    topics of `pydoc_data.topics` (what `help("assert")` prints), in a fixed order."""
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars} is not valid: a positive integer")
    modules = (importlib.import_module(name).__doc__ for name in _DOCSTRING_MODULES)
    topics = (pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    docs, left = [], max_chars
    for doc in (*modules, *topics):
        if not doc:  # docstrings are None under python -OO
            continue
        docs.append(doc[:left])
        left -= len(docs[-1])
        if left == 0:
            break
    return docs


def image_patches(images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Images (B, C, H, W), uint8 or float in [0, 255] → float32 patches (B, N, C, 16, 16) and
    the grid (rows, cols), N = rows · cols (§2.1).

    Non-overlapping 16 × 16 patches in raster order (patch k is grid row k // cols, column
    k % cols); pixels normalised to [-1, 1] and divided by √16 = 4, so they lie in
    [-0.25, 0.25]."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if h == 0 or w == 0 or h % PATCH or w % PATCH:
        raise ValueError(
            f"image size H×W = {h}×{w} is not valid: H and W must be positive multiples of {PATCH}"
        )
    x = images.float()
    if images.dtype != torch.uint8:
        bad = ~((x >= 0) & (x <= 255))
        if bad.any():
            raise ValueError(f"pixel value {float(x[bad][0])} is outside [0, 255]")
    x = (x / 127.5 - 1.0) / math.sqrt(PATCH)
    rows, cols = h // PATCH, w // PATCH
    x = x.reshape(b, c, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, rows * cols, c, PATCH, PATCH), (rows, cols)


@dataclass(frozen=True)
class Text:
    """Text ids in an observation (e.g. an instruction); trained on like all text (§2.3)."""

    ids: torch.Tensor | Sequence[int]


@dataclass(frozen=True)
class Discrete:
    """Integers in [0, 1024), any shape (button presses, grid cells)."""

    values: torch.Tensor | Sequence


@dataclass(frozen=True)
class Continuous:
    """Floats, any shape; `compand=False` for values already in [-1, 1] (§2.1)."""

    values: torch.Tensor | Sequence
    compand: bool = True


@dataclass(frozen=True)
class Image:
    """`num_patches` slots for the patches of one image (`image_patches`), whose embeddings
    `PatchEmbedding` computes; they are fed in the order the slots appear."""

    num_patches: int


@dataclass
class TokenRow:
    """The tokens (L,) of a timestep, or of timesteps one after another, and what the embedding
    and the loss need of them.

    ids: int64 vocabulary ids (0, a placeholder, where is_image); is_image: bool, a patch
    embedding goes here; local_positions: int64 local observation positions (App. C.3);
    loss_mask: bool, the token is a target of the loss (§2.3)."""

    ids: torch.Tensor
    is_image: torch.Tensor
    local_positions: torch.Tensor
    loss_mask: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    @classmethod
    def cat(cls, rows: Sequence[TokenRow]) -> TokenRow:
        """Timesteps in time order (an episode, §2.1)."""
        return cls(*(torch.cat([getattr(r, f.name) for r in rows]) for f in fields(cls)))


def _entry_ids(key: str, entry: Text | Discrete | Continuous | Image, vocab: Vocab) -> torch.Tensor:
    if isinstance(entry, Text):
        ids = torch.as_tensor(entry.ids, dtype=torch.long).reshape(-1)
        bad = (ids < 0) | (ids >= vocab.text_size)
        if bad.any():
            raise ValueError(
                f"{key!r}: text id {int(ids[bad][0])} is out of range: allowed "
                f"[0, {vocab.text_size})"
            )
        return ids
    if isinstance(entry, Discrete):
        return tokenize_discrete(entry.values)
    if isinstance(entry, Continuous):
        return tokenize_continuous(entry.values, vocab, entry.compand)
    if isinstance(entry, Image):
        if entry.num_patches < 1:
            raise ValueError(f"{key!r}: num_patches={entry.num_patches} is not valid: >= 1")
        return torch.zeros(entry.num_patches, dtype=torch.long)
    raise TypeError(
        f"{key!r}: an entry of type {type(entry).__name__}; allowed Text, Discrete, Continuous, "
        "Image"
    )


def timestep_tokens(
    observation: Mapping[str, Text | Discrete | Continuous | Image],
    action: Discrete | Continuous,
    vocab: Vocab,
    local_positions: int = LOCAL_POSITIONS,
) -> TokenRow:
    """One agent timestep, [observation tokens] '|' [action tokens] (§2.1).

    Observation entries go in lexicographic key order, each flattened row-major.
    Local positions (App. C.3): the i-th observation token gets i (0 … n − 1, n ≤
    `local_positions`); "all action tokens are given the same position encoding", the extra index
    `local_positions`, and so does the separator (our choice: the paper names none for it, and it
    opens the action part). Loss mask (§2.3): text and action tokens only, never other
    observations, image patches or the separator."""
    obs = [(entry, _entry_ids(key, entry, vocab)) for key, entry in sorted(observation.items())]
    n = sum(len(ids) for _, ids in obs)
    if n > local_positions:
        raise ValueError(
            f"an observation of {n} tokens: the local position encodings cover "
            f"local_positions={local_positions}"
        )
    if not isinstance(action, Discrete | Continuous):
        raise TypeError(f"action of type {type(action).__name__}; allowed Discrete or Continuous")
    act = _entry_ids("action", action, vocab)
    if len(act) == 0:
        raise ValueError("an action of 0 tokens: at least 1")
    obs_ids = [ids for _, ids in obs]
    is_image = [torch.full((len(ids),), isinstance(e, Image)) for e, ids in obs]
    is_text = [torch.full((len(ids),), isinstance(e, Text)) for e, ids in obs]
    after = 1 + len(act)  # the separator, then the actions
    return TokenRow(
        ids=torch.cat([*obs_ids, torch.tensor([vocab.separator]), act]),
        is_image=torch.cat([*is_image, torch.zeros(after, dtype=torch.bool)]),
        local_positions=torch.cat(
            [torch.arange(n), torch.full((after,), local_positions, dtype=torch.long)]
        ),
        loss_mask=torch.cat(
            [*is_text, torch.tensor([False]), torch.ones(len(act), dtype=torch.bool)]
        ),
    )
