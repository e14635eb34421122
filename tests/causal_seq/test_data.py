import math

import pytest
import torch

from causal_seq.data import BernoulliBandit, LatentGoalGrid, rollout, sample_theta


def _bandit_joint(task, theta, actions, rewards, expert_actions: bool) -> float:
    """P(history, θ) by direct enumeration of the product of per-step probabilities."""
    p = 1.0 / task.num_latents
    for a, r in zip(actions, rewards, strict=True):
        if expert_actions:
            p *= 1.0 if a == theta else 0.0
        pay = task.p_best if a == theta else task.p_other
        p *= pay if r == 1 else 1.0 - pay
    return p


def _normalised(joint):
    total = sum(joint)
    return [j / total for j in joint] if total > 0 else [math.nan] * len(joint)


def test_bandit_posteriors_match_brute_force_enumeration():
    task = BernoulliBandit(num_arms=3, p_best=0.7, p_other=0.3, horizon=8)
    g = torch.Generator().manual_seed(0)
    theta = sample_theta(task, 64, g)
    traj = rollout(task, "posterior", theta, g)
    rewards = traj.tokens[:, :, task.num_actions + 1].long()  # o_t = r_{t-1}
    for b in range(64):
        for t in range(task.horizon):
            acts = traj.actions[b, :t].tolist()
            rews = rewards[b, 1 : t + 1].tolist()
            do = _normalised([_bandit_joint(task, k, acts, rews, False) for k in range(3)])
            cond = _normalised([_bandit_joint(task, k, acts, rews, True) for k in range(3)])
            assert traj.posterior_do[b, t].tolist() == pytest.approx(do, abs=1e-5)
            got = traj.posterior_cond[b, t].tolist()
            assert got == pytest.approx(cond, abs=1e-5, nan_ok=True)


def test_grid_posteriors_match_brute_force_replay():
    """Replay each hypothesis goal with the recorded actions and score the observations."""
    task = LatentGoalGrid(size=5, horizon=10, signal_noise=0.2)
    g = torch.Generator().manual_seed(1)
    theta = sample_theta(task, 32, g)
    traj = rollout(task, "posterior", theta, g)
    on_goal_col, warm_col = -2, -1
    for b in range(32):
        pos = [task.size // 2, task.size // 2]
        lik = [0.25] * 4
        for t in range(task.horizon):
            assert traj.posterior_do[b, t].tolist() == pytest.approx(_normalised(lik), abs=1e-5)
            if t + 1 == task.horizon:
                break
            move = task.MOVES[traj.actions[b, t]].tolist()
            new = [min(max(pos[i] + move[i], 0), task.size - 1) for i in range(2)]
            obs = traj.tokens[b, t + 1]
            for k, goal in enumerate(task.goals.tolist()):
                dist_before = abs(pos[0] - goal[0]) + abs(pos[1] - goal[1])
                dist_after = abs(new[0] - goal[0]) + abs(new[1] - goal[1])
                if float(new == goal) != obs[on_goal_col].item():
                    lik[k] = 0.0
                warmer = float(dist_after < dist_before)
                lik[k] *= 0.8 if warmer == obs[warm_col].item() else 0.2
            pos = new


def test_thompson_sampling_is_near_optimal_on_a_known_bandit():
    """4 arms, 0.8 vs 0.2: posterior sampling finds the best arm; uniform play does not."""
    task = BernoulliBandit(num_arms=4, p_best=0.8, p_other=0.2, horizon=30)
    g = torch.Generator().manual_seed(2)
    theta = sample_theta(task, 4000, g)
    traj = rollout(task, "posterior", theta, g)
    late = traj.optimal[:, -10:].mean().item()
    regret = (task.p_best - traj.mean_rewards).sum(1).mean().item()
    uniform_regret = task.horizon * (task.p_best - (task.p_best + 3 * task.p_other) / 4)
    assert late > 0.95
    assert regret < 0.3 * uniform_regret
    # the first pull has no information: it is uniform
    assert traj.optimal[:, 0].mean().item() == pytest.approx(0.25, abs=0.03)


def test_grid_dynamics_walls_reward_and_expert():
    task = LatentGoalGrid(size=5, horizon=12, signal_noise=0.0)
    g = torch.Generator().manual_seed(0)
    theta = torch.arange(4)
    state, obs = task.reset(theta)
    assert obs.shape == (4, task.obs_dim) and obs[:, 12].eq(1).all()  # centre cell (2, 2)
    traj = rollout(task, "expert", theta, g)
    # corners are at Manhattan distance 4 from the centre: reward from the 4th move on
    assert torch.equal(traj.mean_rewards[:, :3], torch.zeros(4, 3))
    assert torch.equal(traj.mean_rewards[:, 3:], torch.ones(4, 9))
    assert traj.tokens[:, 1:4, -1].eq(1).all()  # noise-free "warmer" after every expert move
    # walls: pushing up from the top row stays in place
    top = {"theta": torch.tensor([0]), "pos": torch.tensor([[0, 3]])}
    state, obs, reward = task.step(top, torch.tensor([1]), g)
    assert state["pos"].tolist() == [[0, 3]] and reward.item() == 0.0
    assert obs[0, -1].item() == 0.0  # not warmer: the distance did not shrink
    state, obs, reward = task.step(state, torch.tensor([3]), g)  # left, towards (0, 0)
    assert state["pos"].tolist() == [[0, 2]] and obs[0, -1].item() == 1.0


def test_rollout_is_deterministic_under_a_seed():
    task = BernoulliBandit(num_arms=4, p_best=0.8, p_other=0.2, horizon=10)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        runs.append(rollout(task, "posterior", sample_theta(task, 16, g), g))
    assert torch.equal(runs[0].actions, runs[1].actions)
    assert torch.equal(runs[0].tokens, runs[1].tokens)
