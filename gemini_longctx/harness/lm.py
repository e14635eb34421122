"""The model interface of the long-context harness and its adapters.

Every task of Gemini 1.5 report §5 (arXiv:2403.05530) needs one thing from a model: the
next-token logits of a single, growing context. `LM.start` opens such a context (`Session`);
`feed` appends tokens and returns their logits, `rewind` drops a suffix so a prefilled haystack
serves several questions. Two adapters: `FullForwardLM` (any `forward(ids) -> logits`, re-run
over the whole context on every feed: the O(T²) baseline) and `HFCausalLM` (a Hugging Face
causal LM with a key/value cache: long inputs streamed chunk by chunk in O(T) memory).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Tokenizer(Protocol):
    """Text <-> token ids, with no special tokens added."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class Session(Protocol):
    """One growing context of a single sequence (batch 1)."""

    length: int

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Append int64 (t,) ids; return float32 (t, V) logits, row i predicting after ids[i]."""
        ...

    def rewind(self, length: int) -> None:
        """Drop everything after the first `length` tokens."""
        ...


class LM(Protocol):
    """A causal LM; `max_context`: the longest context it is meant for (None: no limit)."""

    vocab_size: int
    max_context: int | None

    def start(self, max_len: int) -> Session:
        """Open an empty context that will hold at most `max_len` tokens."""
        ...


class _Context:
    """Length bookkeeping and input checks shared by the adapters' sessions."""

    def __init__(self, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.length = 0

    def _check_feed(self, ids: torch.Tensor) -> None:
        if ids.dim() != 1 or ids.dtype != torch.int64 or ids.numel() == 0:
            raise ValueError(
                f"feed takes a non-empty 1-D int64 tensor, got shape {tuple(ids.shape)} {ids.dtype}"
            )
        if self.length + ids.numel() > self.max_len:
            raise ValueError(
                f"feeding {ids.numel()} tokens onto {self.length} exceeds max_len={self.max_len}"
            )

    def _check_rewind(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"rewind length must be in [0, {self.length}], got {length}")


class FullForwardLM:
    """Any `forward(ids (1, T)) -> logits (1, T, V)` callable, with no cache.

    Each `feed` re-runs `forward` over the whole context and returns the new positions' logits:
    a session of many feeds costs O(T²) compute, and each feed the memory of one full-context
    forward; the naive baseline the streaming adapters are checked against. `forward` receives
    CPU ids and moves them to its device itself.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        vocab_size: int,
        max_context: int | None = None,
    ) -> None:
        self.forward = forward
        self.vocab_size = vocab_size
        self.max_context = max_context

    def start(self, max_len: int) -> FullForwardSession:
        return FullForwardSession(self.forward, max_len)


class FullForwardSession(_Context):
    """Keeps the context's ids; every feed runs `forward` over all of them."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_len: int) -> None:
        super().__init__(max_len)
        self._forward = forward
        self._ids = torch.empty(0, dtype=torch.int64)

    @torch.no_grad()
    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_feed(ids)
        self._ids = torch.cat([self._ids, ids.cpu()])
        self.length = self._ids.numel()
        return self._forward(self._ids[None])[0, -ids.numel() :].float()

    def rewind(self, length: int) -> None:
        self._check_rewind(length)
        self._ids = self._ids[:length]
        self.length = length


class HFCausalLM:
    """A Hugging Face `transformers` causal LM; sessions keep its `DynamicCache`.

    `max_context` is `config.max_position_embeddings` where the config has one.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_context = getattr(model.config, "max_position_embeddings", None)

    def start(self, max_len: int) -> HFSession:
        return HFSession(self.model, max_len)


class HFSession(_Context):
    """Feeds tokens on top of the model's key/value cache; rewinds by cropping it."""

    def __init__(self, model: PreTrainedModel, max_len: int) -> None:
        from transformers import DynamicCache

        super().__init__(max_len)
        self._model = model
        self._cache = DynamicCache(config=model.config)

    @torch.no_grad()
    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_feed(ids)
        out = self._model(
            input_ids=ids[None].to(self._model.device), past_key_values=self._cache, use_cache=True
        )
        self._cache = out.past_key_values
        self.length += ids.numel()
        return out.logits[0].float()

    def rewind(self, length: int) -> None:
        self._check_rewind(length)
        self._cache.crop(length - self.length)  # transformers 5: a negative count of tokens to drop
        self.length = length


class HFTokenizer:
    """A `transformers` tokenizer that adds no special tokens (the harness builds raw prompts)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def load_hf(path: str | Path, device: str | torch.device = "cpu") -> tuple[HFCausalLM, HFTokenizer]:
    """Load a causal LM and its tokenizer from a local directory; nothing is downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return HFCausalLM(model), HFTokenizer(tokenizer)


def check_context(lm: LM, length: int) -> None:
    """Raise before any work if a context of `length` tokens exceeds the model's `max_context`."""
    if lm.max_context is not None and length > lm.max_context:
        raise ValueError(
            f"context length {length} exceeds the model's max_context={lm.max_context}"
        )


def _as_ids(ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.int64).reshape(-1)


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def prefill(session: Session, ids: Sequence[int] | torch.Tensor, chunk: int) -> torch.Tensor:
    """Feed `ids` in chunks of `chunk` tokens; return only the last position's (V,) logits."""
    _check_chunk(chunk)
    ids = _as_ids(ids)
    if ids.numel() == 0:
        raise ValueError("prefill needs at least one token")
    for start in range(0, ids.numel(), chunk):
        logits = session.feed(ids[start : start + chunk])
    return logits[-1]


def stream_nll(session: Session, ids: Sequence[int] | torch.Tensor, chunk: int) -> torch.Tensor:
    """Float64 (T-1,) NLL of ids[1:], feeding the (T,) ids in chunks (report §5.1).

    Only one chunk's (chunk, V) logits exist at a time, so memory is O(chunk·V) beyond the
    model's own state.
    """
    _check_chunk(chunk)
    ids = _as_ids(ids)
    if ids.numel() < 2:
        raise ValueError(f"stream_nll needs at least 2 tokens, got {ids.numel()}")
    nll = torch.empty(ids.numel() - 1, dtype=torch.float64)
    for start in range(0, ids.numel(), chunk):
        logits = session.feed(ids[start : start + chunk])
        targets = ids[start + 1 : start + chunk + 1]
        rows = logits[: targets.numel()].double()
        nll[start : start + targets.numel()] = F.cross_entropy(
            rows, targets.to(rows.device), reduction="none"
        ).cpu()
    return nll


def greedy(
    session: Session,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    stop: Collection[int] | None = None,
    *,
    chunk: int = 1024,
) -> list[int]:
    """Feed the prompt (in chunks), then decode greedily one token at a time.

    Stops after `max_new_tokens` or before a token in `stop` (not returned). The last token
    returned is not fed, so the session ends `len(prompt) + len(result) - 1` tokens longer.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stop = set(stop or ())
    logits = prefill(session, prompt_ids, chunk)
    out: list[int] = []
    while True:
        token = int(logits.argmax())
        if token in stop:
            return out
        out.append(token)
        if len(out) == max_new_tokens:
            return out
        logits = session.feed(torch.tensor([token]))[-1]
