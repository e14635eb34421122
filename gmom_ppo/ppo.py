"""PPO for continuous control: actor-critic, running normalisers, GAE and the clipped losses.

Every detail of the common single-file implementation (Schulman et al. 2017; Huang et al. 2022,
"The 37 implementation details of PPO") that Garg et al. §2 take as the PPO baseline:
orthogonal init, 64×64 tanh MLPs, a state-independent log-std, observation and reward
normalisation, GAE(λ), ratio clipping and value clipping. Each loss term is written per sample
so that the same function serves the batch loss and torch.func's per-sample gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with the given gain, constant bias."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(inputs: int, hidden: int, outputs: int, out_gain: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(inputs, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, outputs), gain=out_gain),
    )


class Agent(nn.Module):
    """Gaussian policy π(a|s) = N(μ_θ(s), diag(exp(2 log σ))) and value function V_φ(s)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.actor_mean = mlp(obs_dim, hidden, act_dim, out_gain=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(act_dim))
        self.critic = mlp(obs_dim, hidden, 1, out_gain=1.0)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log π(a|s), entropy of π(·|s), V(s) for a batch of observations and actions."""
        mean = self.actor_mean(obs)
        logstd = self.actor_logstd.expand_as(mean)
        z = (action - mean) * torch.exp(-logstd)
        log_prob = (-0.5 * z.pow(2) - logstd - 0.5 * LOG_2PI).sum(-1)
        entropy = (logstd + 0.5 * (1.0 + LOG_2PI)).sum(-1)
        return log_prob, entropy, self.critic(obs).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample a ~ π(·|s); returns (a, log π(a|s), V(s))."""
        mean = self.actor_mean(obs)
        noise = torch.randn_like(mean)
        action = mean + noise * self.actor_logstd.exp()
        log_prob = (-0.5 * noise.pow(2) - self.actor_logstd - 0.5 * LOG_2PI).sum(-1)
        return action, log_prob, self.critic(obs).squeeze(-1)


class RunningMeanStd:
    """Running mean and variance (parallel algorithm of Chan et al.), float64."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = x.mean(0), x.var(0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {
            "mean": torch.tensor(np.asarray(self.mean)),
            "var": torch.tensor(np.asarray(self.var)),
            "count": self.count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var = state["mean"].numpy().copy(), state["var"].numpy().copy()
        self.count = state["count"]


class ObservationNormalizer:
    """s ↦ clip((s − μ) / sqrt(σ² + ε), ±clip), statistics updated with every observation."""

    def __init__(self, obs_dim: int, clip: float, epsilon: float = 1e-8) -> None:
        self.rms, self.clip, self.epsilon = RunningMeanStd((obs_dim,)), clip, epsilon

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.rms.update(obs)
        scaled = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)


class RewardNormalizer:
    """r ↦ clip(r / sqrt(Var[G] + ε), ±clip), G the running discounted return of each env."""

    def __init__(self, num_envs: int, gamma: float, clip: float, epsilon: float = 1e-8) -> None:
        self.rms, self.gamma, self.clip, self.epsilon = RunningMeanStd(), gamma, clip, epsilon
        self.discounted = np.zeros(num_envs, np.float64)

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.discounted = self.discounted * self.gamma + reward
        self.rms.update(self.discounted)
        self.discounted[done] = 0.0
        scaled = reward / np.sqrt(self.rms.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)


def make_envs(env_id: int | str, num_envs: int, seed: int) -> gym.vector.SyncVectorEnv:
    """Synchronous vector of `num_envs` copies; a finished episode resets in the same step."""
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs.action_space.seed(seed)
    return envs


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), time-major (T, N).

    δ_t = r_t + γ V(s_{t+1}) (1 − d_{t+1}) − V(s_t),   A_t = δ_t + γλ (1 − d_{t+1}) A_{t+1};
    `dones[t]` marks that s_t starts a new episode. Returns (advantages, returns = A + V).
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        if t == rewards.shape[0] - 1:
            not_done, bootstrap = 1.0 - next_done, next_value
        else:
            not_done, bootstrap = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * bootstrap * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages, advantages + values


@dataclass(frozen=True)
class LossConfig:
    """Which of PPO's heuristics the loss applies (None / False switches one off)."""

    clip_ratio: float | None = 0.2
    clip_value: bool = True
    clip_value_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5


def ppo_losses(
    policy: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    cfg: LossConfig,
) -> dict[str, torch.Tensor]:
    """Per-sample PPO losses (Schulman et al. 2017, eq. 7 and 9), each of shape (B,).

    actor:  −min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) − c_H H[π],  ρ = π(a|s) / π_old(a|s)
    critic: ½ max((V − R)², (V_old + clip(V − V_old, ±ε_V) − R)²)
    With clip_ratio=None / clip_value=False the unclipped terms −ρ A and ½ (V − R)² remain.
    `policy(obs, actions)` returns (log π(a|s), H[π(·|s)], V(s)): an `Agent` or a functional call
    of one. `advantages` must already be normalised if advantage normalisation is on.
    """
    log_probs, entropy, values = policy(obs, actions)
    ratio = torch.exp(log_probs - old_log_probs)
    actor = -advantages * ratio
    if cfg.clip_ratio is not None:
        clipped = ratio.clamp(1.0 - cfg.clip_ratio, 1.0 + cfg.clip_ratio)
        actor = torch.maximum(actor, -advantages * clipped)
    critic = (values - returns).pow(2)
    if cfg.clip_value:
        v_clipped = old_values + (values - old_values).clamp(
            -cfg.clip_value_range, cfg.clip_value_range
        )
        critic = torch.maximum(critic, (v_clipped - returns).pow(2))
    actor = actor - cfg.ent_coef * entropy
    critic = 0.5 * critic
    return {
        "actor": actor,
        "critic": critic,
        "total": actor + cfg.vf_coef * critic,
        "ratio": ratio.detach(),
        "log_ratio": (log_probs - old_log_probs).detach(),
        "entropy": entropy.detach(),
    }
