"""Per-dimension tokenisation of trajectories (Schubert et al. 2023, §3; Gato, Reed et al. 2022,
§2.1).

Every state dimension, action dimension and the reward is its own token: a value is
standardised with training-data statistics, mu-law companded,

    F(x) = sgn(x) · log(|x| μ + 1) / log(M μ + 1),                 (Gato eq. 1; μ = 100, M = 256)

clipped to [-1, 1] and put in one of `bins` uniform bins. Decoding returns the bin centre mapped
back through F⁻¹, so the round trip error is within half a bin in the companded space. The
standardisation is our addition: raw cartpole velocities reach ±20 and, companded raw, would
leave a few bins for the cosines and sines that decide the reward.

A timestep is the token row  o¹ … o^D, a¹ … a^A, r  (S = D + A + 1 slots); trajectories are
flattened row after row. All values share one vocabulary of `bins` tokens; the model tells the
slots apart by a learned slot embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MU, M = 100.0, 256.0


def mu_law(x: torch.Tensor, mu: float = MU, m: float = M) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs() * mu) / math.log1p(m * mu)


def inverse_mu_law(y: torch.Tensor, mu: float = MU, m: float = M) -> torch.Tensor:
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(m * mu)) / mu


@dataclass
class Tokenizer:
    """Values (…, D) ↔ tokens (…, D) in [0, bins); `mean`/`std` are per dimension of the row
    [obs, action, reward] (length S) and are saved with every model."""

    bins: int
    obs_dim: int
    act_dim: int
    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise ValueError(f"tokenizer.bins={self.bins} is not valid: an integer >= 2")
        if self.mean.shape != (self.slots,) or self.std.shape != (self.slots,):
            raise ValueError(f"mean/std must have {self.slots} entries (obs, action, reward)")

    @classmethod
    def fit(cls, bins: int, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor):
        """Statistics from training data: obs (…, D), actions (…, A), rewards (…)."""
        rows = torch.cat(
            [obs.reshape(-1, obs.shape[-1]), actions.reshape(-1, actions.shape[-1])], -1
        )
        mean = torch.cat([rows.mean(0), rewards.reshape(-1).mean()[None]]).double()
        std = torch.cat([rows.std(0), rewards.reshape(-1).std()[None]]).double()
        return cls(bins, obs.shape[-1], actions.shape[-1], mean, std.clamp_min(1e-6))

    @property
    def slots(self) -> int:
        return self.obs_dim + self.act_dim + 1

    def _slice(self, part: str) -> slice:
        d, a = self.obs_dim, self.act_dim
        return {"obs": slice(0, d), "action": slice(d, d + a), "reward": slice(d + a, d + a + 1)}[
            part
        ]

    def encode(self, x: torch.Tensor, part: str) -> torch.Tensor:
        """Values of one part ("obs" (…, D), "action" (…, A), "reward" (…, 1)) → int64 tokens."""
        s = self._slice(part)
        z = (x.double() - self.mean[s].to(x.device)) / self.std[s].to(x.device)
        y = mu_law(z).clamp(-1.0, 1.0)
        return ((y + 1.0) / 2.0 * self.bins).floor().long().clamp(0, self.bins - 1)

    def decode(self, tokens: torch.Tensor, part: str) -> torch.Tensor:
        """Tokens of one part → float32 values at the bin centres."""
        s = self._slice(part)
        y = (tokens.double() + 0.5) / self.bins * 2.0 - 1.0
        z = inverse_mu_law(y)
        return (z * self.std[s].to(z.device) + self.mean[s].to(z.device)).float()

    def bin_values(self, part: str) -> torch.Tensor:
        """(bins, width of part) decoded value of every token, for expectations over logits."""
        s = self._slice(part)
        width = s.stop - s.start
        return self.decode(torch.arange(self.bins)[:, None].expand(-1, width), part)

    def encode_steps(
        self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor
    ) -> torch.Tensor:
        """obs (…, T, D), actions (…, T, A), rewards (…, T) → tokens (…, T · S), row by row."""
        rows = torch.cat(
            [
                self.encode(obs, "obs"),
                self.encode(actions, "action"),
                self.encode(rewards[..., None], "reward"),
            ],
            -1,
        )
        return rows.flatten(-2)

    def state_dict(self) -> dict:
        return {
            "bins": self.bins,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Tokenizer:
        return cls(**state)
