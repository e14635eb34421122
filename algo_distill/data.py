"""Learning-history datasets and across-episode context windows (Laskin et al. 2022, §4).

A history is the ordered stream of transitions (o_t, a_t, r_t) of one learner across all of its
episodes. The model reads one token per step made of (o_t, a_{t-1}, r_{t-1}, step in episode),
where a_{t-1}, r_{t-1} are a "none" action and reward 0 on the first step of every episode, and
predicts a_t. A training window is `context_len` consecutive steps starting anywhere in a
history: with context_len = k · episode_len it spans k episodes (or parts of k + 1), so the
model sees the learner improve *across* episodes, which is what AD distils.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from algo_distill.envs import NUM_ACTIONS

KINDS = ("learning", "expert")
TOKEN_FIELDS = ("obs", "prev_action", "prev_reward", "timestep")
HISTORY_KEYS = ("obs", "actions", "rewards")
STEP_KEYS = (*HISTORY_KEYS, "dones")  # per-step arrays of a shard (N, episodes · T)
NO_ACTION = NUM_ACTIONS  # the "previous action" at the first step of an episode


def load_manifest(dataset: str | Path) -> dict[str, Any]:
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"dataset={dataset}: no manifest.json (run algo_distill.collect)")
    return json.loads(path.read_text())


def load_histories(dataset: str | Path, kind: str) -> dict[str, np.ndarray]:
    """All histories of one kind ("learning" for AD, "expert" for ED), shards concatenated."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; allowed: {KINDS}")
    manifest = load_manifest(dataset)
    shards = [np.load(Path(dataset) / name) for name in manifest["shards"][kind]]
    return {key: np.concatenate([s[key] for s in shards]) for key in shards[0].files}


def subsample_episodes(
    data: dict[str, np.ndarray], episode_len: int, every: int
) -> dict[str, np.ndarray]:
    """Keep every `every`-th episode of each history (episodes 0, k, 2k, …, in order): a
    subsampled learning history shows k episodes of the source's learning per episode, so the
    distilled algorithm can improve faster than its source (§5, "AD is more data-efficient").
    The per-step arrays (N, E · T) become (N, ⌈E / k⌉ · T), the returns (N, E) (N, ⌈E / k⌉)."""
    if every == 1:
        return data
    out = dict(data)
    for key in STEP_KEYS:
        episodes = data[key].reshape(len(data[key]), -1, episode_len)[:, ::every]
        out[key] = episodes.reshape(len(episodes), -1)
    out["returns"] = data["returns"][:, ::every]
    return out


def step_tokens(
    obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, episode_len: int
) -> dict[str, torch.Tensor]:
    """Per-step model inputs of histories (N, L) that start at an episode boundary."""
    length = obs.shape[1]
    timestep = torch.arange(length) % episode_len
    first = (timestep == 0).expand_as(obs)
    prev_action = torch.roll(actions.long(), 1, dims=1).masked_fill(first, NO_ACTION)
    prev_reward = torch.roll(rewards.long(), 1, dims=1).masked_fill(first, 0)
    return {
        "obs": obs.long(),
        "prev_action": prev_action,
        "prev_reward": prev_reward,
        "timestep": timestep.expand_as(obs).clone(),
    }


@dataclass
class HistoryWindows:
    """Samples (tokens, target actions) windows of `context_len` steps from histories."""

    tokens: dict[str, torch.Tensor]  # field -> (N, L)
    actions: torch.Tensor  # (N, L)
    context_len: int

    @classmethod
    def from_dataset(
        cls,
        dataset: str | Path,
        kind: str,
        context_len: int,
        episode_len: int,
        subsample_every: int = 1,
    ) -> HistoryWindows:
        data = subsample_episodes(load_histories(dataset, kind), episode_len, subsample_every)
        length = data["obs"].shape[1]
        if length < context_len:
            raise ValueError(
                f"{kind} histories have {length} steps (after keeping every {subsample_every}-th "
                f"episode) < context of {context_len} steps: collect longer histories or shorten "
                "context_episodes"
            )
        obs, actions, rewards = (torch.from_numpy(data[k].astype(np.int64)) for k in HISTORY_KEYS)
        return cls(step_tokens(obs, actions, rewards, episode_len), actions, context_len)

    def __len__(self) -> int:
        return self.actions.shape[0]

    def sample(
        self, batch: int, generator: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`batch` windows from uniformly drawn histories and start steps."""
        num, length = self.actions.shape
        rows = torch.randint(num, (batch, 1), generator=generator)
        starts = torch.randint(length - self.context_len + 1, (batch, 1), generator=generator)
        cols = starts + torch.arange(self.context_len)
        tokens = {k: v[rows, cols] for k, v in self.tokens.items()}
        return tokens, self.actions[rows, cols]
