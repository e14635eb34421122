"""In-context rollouts with frozen weights (Laskin et al. 2022, §5 "Evaluation").

The model acts on held-out tasks for many episodes in a row; its own history (obs, action,
reward) is its only context, a sliding window of the last `context_len` steps. Weights never
change: any improvement from episode to episode is in-context reinforcement learning.
"""

from __future__ import annotations

import numpy as np
import torch

from algo_distill.data import NO_ACTION, TOKEN_FIELDS
from algo_distill.envs import DarkGridEnv
from algo_distill.model import AlgorithmDistillationTransformer

MODES = ("kv_cache", "full_context")


@torch.no_grad()
def in_context_rollout(
    model: AlgorithmDistillationTransformer,
    env: DarkGridEnv,
    episodes: int,
    seed: int,
    mode: str = "kv_cache",
) -> np.ndarray:
    """Return of every episode, (num_envs, episodes), actions sampled from the model's policy.

    mode "kv_cache": decode one step at a time with a sliding-window KV cache per layer;
    "full_context": recompute the forward over the whole history at every step (same window
    mask, same result, quadratic cost) — the reference the cache is checked and timed against.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; allowed: {MODES}")
    model.eval()
    device = model.head.weight.device
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    batch = env.num_envs
    returns = np.zeros((batch, episodes), dtype=np.float32)
    state = model.initial_state(batch) if mode == "kv_cache" else None
    history: dict[str, list[torch.Tensor]] = {field: [] for field in TOKEN_FIELDS}
    for episode in range(episodes):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        prev_action = torch.full((batch,), NO_ACTION, dtype=torch.long)
        prev_reward = torch.zeros(batch, dtype=torch.long)
        for t in range(env.episode_len):
            token = {
                "obs": torch.from_numpy(obs).long(),
                "prev_action": prev_action,
                "prev_reward": prev_reward,
                "timestep": torch.full((batch,), t, dtype=torch.long),
            }
            token = {k: v.to(device) for k, v in token.items()}
            if state is not None:
                logits, state = model.step(token, state)
            else:
                for field in TOKEN_FIELDS:
                    history[field].append(token[field])
                logits = model({k: torch.stack(v, 1) for k, v in history.items()})[:, -1]
            probs = logits.double().softmax(-1).cpu()
            action = torch.multinomial(probs, 1, generator=generator)[:, 0]
            obs, reward, _, _, _ = env.step(action.numpy())
            returns[:, episode] += reward
            prev_action, prev_reward = action, torch.from_numpy(reward).long()
    return returns
