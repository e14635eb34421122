"""Latent-variable decision problems, their experts, and the exact Bayesian posteriors.

Every task has a latent θ drawn from a uniform prior over `num_latents` values; the expert
acts knowing θ, the learner never sees it (§2 of the report). All tasks are batched: one call
steps B independent episodes with tensor operations, no per-episode Python.

Two exact posteriors are tracked along any trajectory (§3, "actions as causal interventions"):
  do-posterior          P(θ | o_{1:t}, do(a_{1:t})) ∝ P(θ) Π_s P(o_s | θ, o_{<s}, a_{≤s})
  conditioning posterior P(θ | o_{1:t}, a_{1:t})   ∝ P(θ) Π_s π*_θ(a_s | ·) P(o_s | θ, ·)
The second treats the agent's own actions as evidence, as if the expert had taken them: the
source of the auto-suggestive delusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

TASKS = ("bandit", "grid")


class Task(Protocol):
    num_actions: int
    num_latents: int
    obs_dim: int
    horizon: int

    def reset(self, theta: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]: ...

    def step(
        self, state: dict[str, torch.Tensor], action: torch.Tensor, generator: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]: ...

    def expert_probs_all(self, state: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def mean_reward(self, state: dict[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor: ...

    def obs_log_likelihood_all(
        self, state: dict[str, torch.Tensor], action: torch.Tensor, obs: torch.Tensor
    ) -> torch.Tensor: ...


class BernoulliBandit:
    """K-armed Bernoulli bandit; θ is the best arm, paying with `p_best`, the others `p_other`.

    The expert always pulls arm θ. Observation after a pull: its reward (0 before the first).
    """

    def __init__(self, num_arms: int, p_best: float, p_other: float, horizon: int) -> None:
        self.num_actions = self.num_latents = num_arms
        self.obs_dim = 1
        self.horizon = horizon
        self.p_best, self.p_other = p_best, p_other

    def _pay_prob(self, theta: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.where(action == theta, self.p_best, self.p_other)

    def reset(self, theta: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"theta": theta}, torch.zeros(len(theta), 1)

    def step(self, state, action, generator):
        reward = torch.bernoulli(self._pay_prob(state["theta"], action), generator=generator)
        return state, reward[:, None], reward

    def expert_probs_all(self, state):
        batch = len(state["theta"])
        return torch.eye(self.num_actions).expand(batch, -1, -1)

    def mean_reward(self, state, action):
        return self._pay_prob(state["theta"], action)

    def obs_log_likelihood_all(self, state, action, obs):
        hypotheses = torch.arange(self.num_latents)
        pay = self._pay_prob(hypotheses[None, :], action[:, None])  # (B, L)
        return torch.where(obs > 0.5, pay, 1.0 - pay).log()


class LatentGoalGrid:
    """A size×size room; the goal is one of the four corners (θ) and is not seen.

    The agent starts in the centre. After each move it observes its position, whether it
    stands on the goal, and a noisy "warmer" bit: 1 if the move shortened the Manhattan
    distance to the goal, flipped with probability `signal_noise`. Reward 1 on every step it
    ends on the goal. Actions: stay, up, down, left, right. The expert walks straight to the
    goal (uniformly among the moves that shorten the distance) and stays there.
    """

    MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])

    def __init__(self, size: int, horizon: int, signal_noise: float) -> None:
        self.size = size
        self.signal_noise = signal_noise
        self.num_actions = len(self.MOVES)
        self.num_latents = 4
        self.obs_dim = size * size + 2
        self.horizon = horizon
        last = size - 1
        self.goals = torch.tensor([[0, 0], [0, last], [last, 0], [last, last]])
        self.start = torch.tensor([size // 2, size // 2])

    def _obs(self, pos: torch.Tensor, on_goal: torch.Tensor, warmer: torch.Tensor) -> torch.Tensor:
        cell = torch.nn.functional.one_hot(pos[:, 0] * self.size + pos[:, 1], self.size**2)
        return torch.cat([cell.float(), on_goal.float()[:, None], warmer.float()[:, None]], dim=1)

    def _move(self, pos: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (pos + self.MOVES[action]).clamp(0, self.size - 1)

    def reset(self, theta):
        pos = self.start.expand(len(theta), 2).clone()
        on_goal = (pos == self.goals[theta]).all(-1)
        return {"theta": theta, "pos": pos}, self._obs(pos, on_goal, torch.zeros_like(on_goal))

    def _shortens_all(self, pos: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, L): whether moving pos → after shortens the distance to each candidate goal."""
        before = (pos[:, None, :] - self.goals[None]).abs().sum(-1)
        return (after[:, None, :] - self.goals[None]).abs().sum(-1) < before

    def step(self, state, action, generator):
        theta = state["theta"]
        pos = self._move(state["pos"], action)
        on_goal = (pos == self.goals[theta]).all(-1)
        shortened = self._shortens_all(state["pos"], pos)[torch.arange(len(theta)), theta]
        flip = torch.rand(len(theta), generator=generator) < self.signal_noise
        obs = self._obs(pos, on_goal, shortened ^ flip)
        return {"theta": theta, "pos": pos}, obs, on_goal.float()

    def expert_probs_all(self, state):
        pos = state["pos"]  # (B, 2)
        after = (pos[:, None, :] + self.MOVES[None]).clamp(0, self.size - 1)  # (B, A, 2)
        dist_now = (pos[:, None, :] - self.goals[None]).abs().sum(-1)  # (B, L)
        dist_after = (after[:, None, :, :] - self.goals[None, :, None, :]).abs().sum(-1)  # (B,L,A)
        shortens = dist_after < dist_now[..., None]
        at_goal = (dist_now == 0)[..., None]
        stay = torch.zeros_like(shortens)
        stay[..., 0] = True
        allowed = torch.where(at_goal, stay, shortens).float()
        return allowed / allowed.sum(-1, keepdim=True)

    def mean_reward(self, state, action):
        pos = self._move(state["pos"], action)
        return (pos == self.goals[state["theta"]]).all(-1).float()

    def obs_log_likelihood_all(self, state, action, obs):
        pos = self._move(state["pos"], action)
        on_goal_if = (pos[:, None, :] == self.goals[None]).all(-1)  # (B, L)
        on_goal_seen, warmer_seen = obs[:, -2:-1] > 0.5, obs[:, -1:] > 0.5
        goal_log_lik = torch.where(on_goal_if == on_goal_seen, 0.0, -torch.inf)
        warmer_if = self._shortens_all(state["pos"], pos)
        signal = torch.where(warmer_if == warmer_seen, 1.0 - self.signal_noise, self.signal_noise)
        return goal_log_lik + signal.log()


def make_task(name: str, **kwargs) -> Task:
    if name == "bandit":
        return BernoulliBandit(**kwargs)
    if name == "grid":
        return LatentGoalGrid(**kwargs)
    raise ValueError(f"task.name={name!r} is not a task; allowed: {TASKS}")


def normalise_log_posterior(log_joint: torch.Tensor) -> torch.Tensor:
    """Posterior probabilities from unnormalised log joints; NaN rows where the history has
    probability zero under every hypothesis (possible for the conditioning posterior)."""
    norm = torch.logsumexp(log_joint, dim=-1, keepdim=True)
    return torch.where(torch.isfinite(norm), (log_joint - norm).exp(), torch.nan)


@dataclass
class Trajectory:
    """A batch of episodes, time-major per field: tensors of shape (B, T, ...)."""

    tokens: torch.Tensor  # model inputs: one-hot previous action (+start) ⊕ observation
    actions: torch.Tensor  # (B, T) actions taken
    policy_probs: torch.Tensor  # (B, T, A) the acting policy's distribution
    expert_probs: torch.Tensor  # (B, T, A) the expert's distribution for the true θ
    mean_rewards: torch.Tensor  # (B, T) expected reward of the action taken
    optimal: torch.Tensor  # (B, T) 1 where the action is one the expert could take
    posterior_do: torch.Tensor  # (B, T, L) exact belief at decision time, actions as do(a)
    posterior_cond: torch.Tensor  # (B, T, L) exact belief, own actions conditioned on
    predictive_do: torch.Tensor  # (B, T, A) Σ_θ P_do(θ|h) π*_θ(a|s): posterior sampling
    predictive_cond: torch.Tensor  # (B, T, A) the same under the conditioning posterior
    theta: torch.Tensor  # (B,)


def token_dim(task: Task) -> int:
    return task.num_actions + 1 + task.obs_dim


def make_token(task: Task, prev_action: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """[one-hot(a_{t-1}) with index A meaning "no action yet", o_t]."""
    one_hot = torch.nn.functional.one_hot(prev_action, task.num_actions + 1).float()
    return torch.cat([one_hot, obs], dim=-1)


@torch.no_grad()
def rollout(
    task: Task,
    policy,
    theta: torch.Tensor,
    generator: torch.Generator,
    posteriors: bool = True,
) -> Trajectory:
    """Run B episodes of `task.horizon` steps with latent `theta` (B,).

    `policy` is "expert" (knows θ), "posterior" (exact posterior sampling: Thompson sampling /
    the Bayesian control rule, the policy counterfactual teaching converges to), or a model
    with `initial_state(B)` and `step(token, state) -> (logits, state)`. With
    `posteriors=False` (training) the exact posteriors are not tracked (left at zero).
    """
    if policy == "posterior" and not posteriors:
        raise ValueError("the posterior policy needs posteriors=True")
    batch, horizon, n_act, n_lat = len(theta), task.horizon, task.num_actions, task.num_latents
    rows = torch.arange(batch)
    out = {
        "tokens": torch.zeros(batch, horizon, token_dim(task)),
        "actions": torch.zeros(batch, horizon, dtype=torch.long),
        "policy_probs": torch.zeros(batch, horizon, n_act),
        "expert_probs": torch.zeros(batch, horizon, n_act),
        "mean_rewards": torch.zeros(batch, horizon),
        "optimal": torch.zeros(batch, horizon),
        "posterior_do": torch.zeros(batch, horizon, n_lat),
        "posterior_cond": torch.zeros(batch, horizon, n_lat),
        "predictive_do": torch.zeros(batch, horizon, n_act),
        "predictive_cond": torch.zeros(batch, horizon, n_act),
    }
    state, obs = task.reset(theta)
    prev_action = torch.full((batch,), n_act)
    log_do = torch.zeros(batch, n_lat)  # uniform prior
    log_cond = torch.zeros(batch, n_lat)
    if isinstance(policy, str):
        model_state = device = None
    else:
        model_state = policy.initial_state(batch)
        device = next(policy.parameters()).device
    for t in range(horizon):
        token = make_token(task, prev_action, obs)
        experts = task.expert_probs_all(state)  # (B, L, A)
        expert = experts[rows, theta]
        if posteriors:
            post_do = normalise_log_posterior(log_do)
            post_cond = normalise_log_posterior(log_cond)
            pred_do = torch.einsum("bl,bla->ba", post_do, experts)
            out["posterior_do"][:, t] = post_do
            out["posterior_cond"][:, t] = post_cond
            out["predictive_do"][:, t] = pred_do
            out["predictive_cond"][:, t] = torch.einsum("bl,bla->ba", post_cond, experts)
        if policy == "expert":
            probs = expert
        elif policy == "posterior":
            probs = pred_do
        else:
            logits, model_state = policy.step(token.to(device), model_state)
            probs = logits.float().softmax(-1).cpu()
        action = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out["tokens"][:, t] = token
        out["actions"][:, t] = action
        out["policy_probs"][:, t] = probs
        out["expert_probs"][:, t] = expert
        out["mean_rewards"][:, t] = task.mean_reward(state, action)
        out["optimal"][:, t] = (expert[rows, action] > 0).float()
        next_state, obs, _ = task.step(state, action, generator)
        if posteriors:
            evidence = task.obs_log_likelihood_all(state, action, obs)
            log_do = log_do + evidence
            log_cond = log_cond + experts[rows, :, action].log() + evidence
        state, prev_action = next_state, action
    return Trajectory(theta=theta, **out)


def sample_theta(task: Task, batch: int, generator: torch.Generator) -> torch.Tensor:
    """θ from the uniform prior."""
    return torch.randint(task.num_latents, (batch,), generator=generator)
