"""Episodes on disk and the token-sequence loader (Reed et al. 2022, §2.1, §2.3, §3).

- Agent episodes are Minari datasets (`gato/<task>/expert-v0` under `<dataset>/minari`), written
  by `write_dataset` from the raw environment observations, so the data can be re-tokenised under
  another scheme without collecting again; `manifest.json` holds per-task expert and random
  scores, the filter and the train / val episode split.
- `tokenize_episode` turns an episode into per-timestep tokens once (every timestep of an episode
  has the same layout), `Mixture` draws training sequences of `context` tokens from a weighted
  mixture of sources: agent episodes (with the demonstration prompt of §2.3 with probability
  0.25: a window of another episode of the task, half the time its end, half the time anywhere),
  text windows and packed caption examples.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gato.tasks import Policy, Task
from gato.tokenizer import (
    EOT,
    LOCAL_POSITIONS,
    TextTokenizer,
    TokenRow,
    Vocab,
    image_patches,
    timestep_tokens,
)

FILTER = 0.8  # keep control episodes with at least 80% of the expert's return (§3.1)


@dataclass
class Episode:
    """Raw environment data: observations (T + 1 of them: a stacked array, or a dict of stacked
    arrays / lists for dict observations), actions (T, …), rewards (T,)."""

    observations: np.ndarray | dict
    actions: np.ndarray
    rewards: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.rewards)

    @property
    def ret(self) -> float:
        return float(np.sum(self.rewards))

    def observation(self, t: int):
        """The raw observation at step t, as the environment returned it."""
        if isinstance(self.observations, Mapping):
            return {k: v[t] for k, v in self.observations.items()}
        return self.observations[t]


def _stack(values: list):
    if isinstance(values[0], Mapping):
        return {k: _stack([v[k] for v in values]) for k in values[0]}
    if isinstance(values[0], str):
        return list(values)
    return np.stack([np.asarray(v) for v in values])


def run_episode(task: Task, env, policy: Policy, seed: int, noise: float = 0.0) -> Episode:
    """One episode of `policy` in `env` from `reset(seed=seed)`, at most `task.max_steps` steps.

    With `noise` > 0 (continuous actions only) the environment executes the policy's action plus
    Gaussian noise of std `noise` × half the action range, clipped to the range, while the
    episode records the policy's clean action: noise injection into the expert's rollouts
    (DART, Laskey et al. 2017), so behaviour cloning sees states off the expert's path labelled
    with the expert's correction."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards = [obs], [], []
    rng = np.random.default_rng(seed)
    space = env.action_space
    for _ in range(task.max_steps):
        action = policy(obs)
        executed = action
        if noise > 0:
            half = (space.high - space.low) / 2
            executed = np.clip(
                action + noise * half * rng.standard_normal(space.shape), space.low, space.high
            ).astype(space.dtype)
        obs, reward, terminated, truncated, _ = env.step(executed)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return Episode(
        _stack(observations),
        np.stack([np.asarray(a) for a in actions]),
        np.array(rewards, np.float32),
    )


def random_policy(env, seed: int) -> Policy:
    """Uniform actions from the env's action space, seeded."""
    env.action_space.seed(seed)
    return lambda obs: env.action_space.sample()


def normalized(score: float, scores: Mapping[str, float]) -> float:
    """(score − random) / (expert − random) (§4.1)."""
    return (score - scores["random"]) / (scores["expert"] - scores["random"])


def keep_episodes(returns: Sequence[float], scores: Mapping[str, float], frac: float = FILTER):
    """Indices of the episodes whose normalised return is at least `frac` (the ≥ 80%-of-expert
    filter of §3.1)."""
    return [i for i, r in enumerate(returns) if normalized(r, scores) >= frac]


def write_dataset(path: Path, task: Task, episodes: list[Episode], env, scores: dict) -> None:
    """The episodes of `task` as the Minari dataset `gato/<task>/expert-v0` under `path`."""
    import minari
    from minari.data_collector import EpisodeBuffer

    os.environ["MINARI_DATASETS_PATH"] = str(path)
    dataset_id = f"gato/{task.name.replace('/', '-')}/expert-v0"
    shutil.rmtree(path / "gato" / task.name.replace("/", "-"), ignore_errors=True)
    buffers = [
        EpisodeBuffer(
            id=i,
            observations=ep.observations,
            actions=ep.actions,
            rewards=list(ep.rewards),
            terminations=[False] * (ep.steps - 1) + [True],
            truncations=[False] * ep.steps,
            infos={},
        )
        for i, ep in enumerate(episodes)
    ]
    with warnings.catch_warnings():  # Minari's advice to add a URL / e-mail / eval env
        warnings.simplefilter("ignore", UserWarning)
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            observation_space=env.observation_space,
            action_space=env.action_space,
            ref_min_score=scores["random"],
            ref_max_score=scores["expert"],
            algorithm_name="scripted expert (gato.control / gato.babyai / gato.atari)",
            author="seqcontrol",
            description=f"gato.collect: {task.name}, expert episodes with >= 80% of expert return",
        )


def read_dataset(path: Path, task: Task) -> list[Episode]:
    """The episodes `write_dataset` wrote for `task`."""
    import minari

    os.environ["MINARI_DATASETS_PATH"] = str(path)
    data = minari.load_dataset(f"gato/{task.name.replace('/', '-')}/expert-v0")
    return [
        Episode(e.observations, np.asarray(e.actions), np.asarray(e.rewards, np.float32))
        for e in data.iterate_episodes()
    ]


def load_manifest(dataset: str | Path) -> dict:
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"dataset={dataset}: no manifest.json (run gato.collect first)")
    return json.loads(path.read_text())


@dataclass
class EpisodeTokens:
    """An episode's timesteps as tokens: ids (T, S) for S tokens per timestep, the per-timestep
    layout local_positions / is_image / loss_mask (S,), frames (T, 3, 96, 96) uint8 or None."""

    ids: torch.Tensor
    local_positions: torch.Tensor
    is_image: torch.Tensor
    loss_mask: torch.Tensor
    frames: torch.Tensor | None

    @property
    def steps(self) -> int:
        return self.ids.shape[0]

    @property
    def step_tokens(self) -> int:
        return self.ids.shape[1]

    def window(self, start: int, stop: int) -> Piece:
        n = stop - start
        return Piece(
            ids=self.ids[start:stop].reshape(-1),
            local_positions=self.local_positions.repeat(n),
            is_image=self.is_image.repeat(n),
            loss_mask=self.loss_mask.repeat(n),
            frames=None if self.frames is None else self.frames[start:stop],
        )


def observation_row(task: Task, obs, action, vocab: Vocab, text: TextTokenizer | None) -> TokenRow:
    """One timestep's tokens (gato.tokenizer.timestep_tokens) for a raw observation and action."""
    return timestep_tokens(task.observation_entries(obs, text), task.action_entry(action), vocab)


def tokenize_episode(
    task: Task, episode: Episode, vocab: Vocab, text: TextTokenizer | None
) -> EpisodeTokens:
    rows = [
        observation_row(task, episode.observation(t), episode.actions[t], vocab, text)
        for t in range(episode.steps)
    ]
    first = rows[0]
    for t, row in enumerate(rows):
        if len(row) != len(first):
            raise ValueError(
                f"{task.name}: timestep {t} has {len(row)} tokens, step 0 {len(first)}"
            )
    frames = None
    if first.is_image.any():
        frames = torch.as_tensor(
            np.stack([task.image(episode.observation(t)) for t in range(episode.steps)])
        )
    return EpisodeTokens(
        torch.stack([r.ids for r in rows]),
        first.local_positions,
        first.is_image,
        first.loss_mask,
        frames,
    )


@dataclass
class Piece:
    """Tokens of part of a sequence (flat, (L,)) and the frames of its image slots in order."""

    ids: torch.Tensor
    local_positions: torch.Tensor
    is_image: torch.Tensor
    loss_mask: torch.Tensor
    frames: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    @staticmethod
    def cat(pieces: Sequence[Piece]) -> Piece:
        frames = [p.frames for p in pieces if p.frames is not None]
        return Piece(
            torch.cat([p.ids for p in pieces]),
            torch.cat([p.local_positions for p in pieces]),
            torch.cat([p.is_image for p in pieces]),
            torch.cat([p.loss_mask for p in pieces]),
            torch.cat(frames) if frames else None,
        )


def text_piece(ids: torch.Tensor) -> Piece:
    """Text tokens: all are targets; they share the local position of outputs (our choice: the
    paper's local positions index observation tokens, and text is an output)."""
    n = len(ids)
    return Piece(
        ids,
        torch.full((n,), LOCAL_POSITIONS, dtype=torch.long),
        torch.zeros(n, dtype=torch.bool),
        torch.ones(n, dtype=torch.bool),
    )


def caption_piece(frame: torch.Tensor, caption_ids: torch.Tensor, num_patches: int) -> Piece:
    """An image's patch slots (local positions 0 … 35, no loss), then its caption (loss)."""
    image = Piece(
        torch.zeros(num_patches, dtype=torch.long),
        torch.arange(num_patches),
        torch.ones(num_patches, dtype=torch.bool),
        torch.zeros(num_patches, dtype=torch.bool),
        frame[None],
    )
    return Piece.cat([image, text_piece(caption_ids)])


class EpisodeSource:
    """Windows of one task's episodes, with the demonstration prompt of §2.3."""

    def __init__(
        self, task: Task, episodes: list[EpisodeTokens], prompt_prob: float, prompt_fraction: float
    ):
        if not episodes:
            raise ValueError(f"{task.name}: no episodes to sample from")
        self.task, self.episodes = task, episodes
        self.prompt_prob, self.prompt_fraction = prompt_prob, prompt_fraction

    def sample(self, context: int, rng: np.random.Generator) -> Piece:
        s = self.episodes[0].step_tokens
        if s > context:
            raise ValueError(
                f"{self.task.name}: a timestep of {s} tokens exceeds context={context}"
            )
        pieces, left = [], context
        if rng.random() < self.prompt_prob and len(self.episodes) > 1:
            prompt = self.episodes[rng.integers(len(self.episodes))]
            n = min(prompt.steps, max(1, int(self.prompt_fraction * context) // s))
            start = prompt.steps - n if rng.random() < 0.5 else rng.integers(prompt.steps - n + 1)
            pieces.append(prompt.window(start, start + n))
            left -= n * s
        ep = self.episodes[rng.integers(len(self.episodes))]
        n = min(ep.steps, left // s)
        if n > 0:
            start = rng.integers(ep.steps - n + 1)
            pieces.append(ep.window(start, start + n))
        return Piece.cat(pieces)


class TextSource:
    """Windows of a token stream (documents joined by the end-of-text token)."""

    def __init__(self, stream: torch.Tensor):
        self.stream = stream

    def sample(self, context: int, rng: np.random.Generator) -> Piece:
        n = min(context, len(self.stream))
        start = rng.integers(len(self.stream) - n + 1)
        return text_piece(self.stream[start : start + n])


class CaptionSource:
    """Caption examples packed into a sequence until the next would not fit."""

    def __init__(self, frames: torch.Tensor, captions: list[torch.Tensor], num_patches: int):
        self.frames, self.captions, self.num_patches = frames, captions, num_patches

    def sample(self, context: int, rng: np.random.Generator) -> Piece:
        pieces, used = [], 0
        while True:
            i = rng.integers(len(self.captions))
            n = self.num_patches + len(self.captions[i])
            if used + n > context:
                break
            pieces.append(caption_piece(self.frames[i], self.captions[i], self.num_patches))
            used += n
        if not pieces:
            raise ValueError(f"context={context} holds no caption example ({n} tokens)")
        return Piece.cat(pieces)


@dataclass
class Batch:
    """Model inputs (B, L) and the patches (num_images, 36, 3, 16, 16) of the is_image slots in
    row-major order; `source` names each row's source."""

    ids: torch.Tensor
    local_positions: torch.Tensor
    is_image: torch.Tensor
    loss_mask: torch.Tensor
    patches: torch.Tensor | None
    source: list[str]

    def rows(self, start: int, stop: int) -> Batch:
        """Rows start … stop − 1 and their patches (a rank's share of a global batch)."""
        patches = None
        if self.patches is not None:
            per_row = self.is_image.sum(1) // self.patches.shape[1]
            offsets = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)])
            patches = self.patches[int(offsets[start]) : int(offsets[stop])]
        return Batch(
            self.ids[start:stop],
            self.local_positions[start:stop],
            self.is_image[start:stop],
            self.loss_mask[start:stop],
            patches,
            self.source[start:stop],
        )

    def to(self, device) -> Batch:
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Batch(
            move(self.ids),
            move(self.local_positions),
            move(self.is_image),
            move(self.loss_mask),
            move(self.patches),
            self.source,
        )


def collate(pieces: list[Piece], names: list[str], context: int) -> Batch:
    """Pad every piece to `context` tokens (padding is never a target) and stack."""

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.cat([x, torch.full((context - len(x),), value, dtype=x.dtype)])

    frames = [p.frames for p in pieces if p.frames is not None]
    return Batch(
        torch.stack([pad(p.ids, 0) for p in pieces]),
        torch.stack([pad(p.local_positions, 0) for p in pieces]),
        torch.stack([pad(p.is_image, False) for p in pieces]),
        torch.stack([pad(p.loss_mask, False) for p in pieces]),
        image_patches(torch.cat(frames))[0] if frames else None,
        names,
    )


class Mixture:
    """Sequences from named sources drawn with probability ∝ weight (§3: the training mixture)."""

    def __init__(
        self, sources: Mapping[str, object], weights: Mapping[str, float], context: int, seed: int
    ):
        missing = sorted(set(sources) - set(weights))
        if missing:
            raise ValueError(f"no mixture weight for sources {missing}")
        self.names = sorted(sources)
        self.sources = sources
        w = np.array([float(weights[n]) for n in self.names])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"mixture weights must be >= 0 with a positive sum, got {dict(weights)}"
            )
        self.p = w / w.sum()
        self.context = context
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> Batch:
        names = [self.names[i] for i in self.rng.choice(len(self.names), size=batch, p=self.p)]
        pieces = [self.sources[n].sample(self.context, self.rng) for n in names]
        return collate(pieces, names, self.context)


def text_stream(text: TextTokenizer, docs: Sequence[str]) -> torch.Tensor:
    """Documents as one token stream, each followed by the end-of-text token."""
    eot = text.encode(EOT)
    ids = []
    for doc in docs:
        ids += text.encode(doc) + eot
    return torch.tensor(ids, dtype=torch.long)
