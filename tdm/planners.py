"""Shooting planners for model-predictive control (Schubert et al. 2023, §4), one implementation
for every model: the planner only calls `score(actions (N, H, A)) -> returns (N,)`.

- random shooting: N sequences uniform in [-1, 1]^(H×A); execute the first action of the best.
- proposal shooting: N sequences around a proposal (H, A) — Gaussian noise of std `noise_std`,
  clipped — with the proposal itself among them. Without an explicit proposal, the previous
  decision's best plan shifted by one step is the proposal (MPC warm start).
- CEM (an extra, reported separately): `iterations` rounds of sampling around a Gaussian that
  is refit to the `elites` best sequences (Rubinstein 1999; PlaNet, Hafner et al. 2019).

Candidates are scored in one batched call, so a model evaluates them all at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from common.config import check_choice, check_number

KINDS = ("random", "proposal", "cem")

Score = Callable[[torch.Tensor], torch.Tensor]


def check_config(node, prefix: str) -> None:
    """Planner settings (a config node or dict): bad values fail naming `prefix` + the key."""
    check_choice(node, "kind", prefix, KINDS)
    for key in ("horizon", "candidates", "iterations", "elites"):
        check_number(node, key, prefix, integer=True)
    check_number(node, "noise_std", prefix)
    if node["kind"] == "cem" and node["elites"] > node["candidates"]:
        raise ValueError(f"{prefix}elites={node['elites']} is not valid: <= {prefix}candidates")


class Planner:
    def __init__(
        self,
        kind: str,
        act_dim: int,
        *,
        horizon: int,
        candidates: int,
        noise_std: float = 0.3,
        iterations: int = 3,
        elites: int = 16,
        seed: int = 0,
    ):
        check_config(
            {
                "kind": kind,
                "horizon": horizon,
                "candidates": candidates,
                "noise_std": noise_std,
                "iterations": iterations,
                "elites": elites,
            },
            "planner.",
        )
        self.kind, self.act_dim = kind, act_dim
        self.horizon, self.candidates = horizon, candidates
        self.noise_std, self.iterations, self.elites = noise_std, iterations, elites
        self.generator = torch.Generator().manual_seed(seed)
        self.reset()

    @classmethod
    def from_config(cls, node, act_dim: int, seed: int) -> Planner:
        """A planner from a config node with kind, horizon, candidates, noise_std, iterations
        and elites (tdm.collect's `expert`, tdm.eval's `planner`)."""
        return cls(
            node.kind,
            act_dim,
            horizon=node.horizon,
            candidates=node.candidates,
            noise_std=node.noise_std,
            iterations=node.iterations,
            elites=node.elites,
            seed=seed,
        )

    def reset(self) -> None:
        """Forget the previous plan (call at every episode start)."""
        self.plan = torch.zeros(self.horizon, self.act_dim)

    def _uniform(self, n: int) -> torch.Tensor:
        shape = (n, self.horizon, self.act_dim)
        return torch.rand(shape, generator=self.generator) * 2 - 1

    def _around(self, mean: torch.Tensor, std: torch.Tensor | float, n: int) -> torch.Tensor:
        noise = torch.randn((n, self.horizon, self.act_dim), generator=self.generator)
        return (mean + std * noise).clamp(-1, 1)

    def act(self, score: Score, proposal: torch.Tensor | None = None) -> np.ndarray:
        """The first action (A,) of the best sequence found; the plan is kept for warm starts."""
        warm = torch.cat([self.plan[1:], self.plan[-1:]]) if proposal is None else proposal
        if self.kind == "random":
            actions = self._uniform(self.candidates)
        elif self.kind == "proposal":
            actions = self._around(warm, self.noise_std, self.candidates)
            actions[0] = warm
        else:
            return self._cem(score, warm)
        returns = score(actions).cpu()
        self.plan = actions[self._best(returns)]
        return self.plan[0].numpy()

    def _best(self, returns: torch.Tensor) -> int:
        """Index of the best candidate; ties (e.g. a sparse reward that no candidate reaches)
        are broken at random, or the planner would keep its warm start and never explore."""
        ties = (returns == returns.max()).nonzero()[:, 0]
        if len(ties) == 1:
            return int(ties[0])
        return int(ties[torch.randint(len(ties), (1,), generator=self.generator)])

    def _cem(self, score: Score, mean: torch.Tensor) -> np.ndarray:
        std = torch.ones_like(mean)
        best, best_return = mean, -float("inf")
        for _ in range(self.iterations):
            actions = self._around(mean, std, self.candidates)
            returns = score(actions).cpu()
            top = returns.topk(self.elites).indices
            if float(returns[top[0]]) > best_return:
                best, best_return = actions[top[0]], float(returns[top[0]])
            elite = actions[top]
            mean, std = elite.mean(0), elite.std(0).clamp_min(0.05)
        self.plan = best
        return best[0].numpy()
