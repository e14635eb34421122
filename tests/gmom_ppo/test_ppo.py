"""PPO pieces: GAE, running statistics, the policy's log-density, the clipped losses."""

import math

import numpy as np
import torch

from gmom_ppo.ppo import Agent, LossConfig, RunningMeanStd, compute_gae, ppo_losses


def test_gae_hand_computed():
    # s_2 starts a new episode (dones[2] = 1), so step 1 does not bootstrap.
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    adv, ret = compute_gae(
        rewards, values, dones, torch.tensor([2.0]), torch.tensor([0.0]), gamma=0.9, lam=0.8
    )
    # t=2: 3 + 0.9·2 − 1.5 = 3.3;  t=1: 2 − 1 = 1;  t=0: (1 + 0.9·1 − 0.5) + 0.72·1 = 2.12
    torch.testing.assert_close(adv, torch.tensor([[2.12], [1.0], [3.3]]))
    torch.testing.assert_close(ret, torch.tensor([[2.62], [2.0], [4.8]]))


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(6, 2), torch.randn(6, 2)
    dones = torch.zeros(6, 2)
    _, ret = compute_gae(rewards, values, dones, torch.zeros(2), torch.ones(2), 0.9, 1.0)
    discounts = 0.9 ** torch.arange(6.0)
    torch.testing.assert_close(ret[0], (discounts[:, None] * rewards).sum(0))


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (5, 17, 1, 40)]
    rms = RunningMeanStd((3,))
    for chunk in chunks:
        rms.update(chunk)
    data = np.concatenate(chunks)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)


def test_log_prob_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    agent = Agent(4, 3)
    with torch.no_grad():
        agent.actor_logstd.fill_(-0.7)
    obs, actions = torch.randn(8, 4), torch.randn(8, 3)
    log_prob, entropy, _ = agent(obs, actions)
    dist = torch.distributions.Normal(agent.actor_mean(obs), math.exp(-0.7))
    torch.testing.assert_close(log_prob, dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, dist.entropy().sum(-1))


def test_ratio_clipping_cuts_the_gradient_outside_the_trust_region():
    torch.manual_seed(0)
    agent = Agent(4, 2)
    obs, actions = torch.randn(1, 4), torch.randn(1, 2)
    with torch.no_grad():
        log_prob, _, value = agent(obs, actions)
    old = log_prob - 1.0  # ratio e ≈ 2.7 > 1.2 with a positive advantage: clipped, no gradient
    batch = (obs, actions, old, torch.ones(1), value, value)
    ppo_losses(agent, *batch, cfg=LossConfig())["actor"].sum().backward()
    assert agent.actor_logstd.grad.abs().max() == 0
    agent.zero_grad()
    ppo_losses(agent, *batch, cfg=LossConfig(clip_ratio=None))["actor"].sum().backward()
    assert agent.actor_logstd.grad.abs().max() > 0
