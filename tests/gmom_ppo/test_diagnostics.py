"""Kurtosis estimator and per-sample gradients (Garg et al. §3)."""

from functools import partial

import pytest
import torch
from scipy import stats

from gmom_ppo.diagnostics import flatten_groups, gradient_kurtosis, kurtosis, per_sample_grads
from gmom_ppo.ppo import Agent, LossConfig, ppo_losses


def test_kurtosis_matches_scipy():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(5.0).sample((500, 7)).double()
    expected = stats.kurtosis(x.numpy(), axis=0, fisher=True, bias=True)
    torch.testing.assert_close(kurtosis(x), torch.from_numpy(expected))
    pearson = stats.kurtosis(x[:, 0].numpy(), fisher=False, bias=True)
    assert kurtosis(x[:, 0], fisher=False).item() == pytest.approx(pearson)


def _batch(batch_size=16, obs_dim=5, act_dim=2):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch_size, obs_dim, generator=g),
        torch.randn(batch_size, act_dim, generator=g),
        -3.0 + 0.3 * torch.randn(batch_size, generator=g),
        torch.randn(batch_size, generator=g),
        torch.randn(batch_size, generator=g),
        torch.randn(batch_size, generator=g),
    )


@pytest.mark.parametrize("cfg", [LossConfig(), LossConfig(clip_ratio=None, clip_value=False)])
def test_per_sample_grads_sum_to_the_batch_gradient(cfg):
    torch.manual_seed(0)
    agent, batch = Agent(5, 2), _batch()
    losses = partial(ppo_losses, cfg=cfg)
    grads = per_sample_grads(agent, losses, *batch)
    losses(agent, *batch)["total"].sum().backward()
    for name, param in agent.named_parameters():
        assert grads[name].shape == (16, *param.shape)
        torch.testing.assert_close(grads[name].sum(0), param.grad, atol=1e-5, rtol=1e-4)


def test_groups_split_actor_and_critic():
    agent, batch = Agent(5, 2), _batch()
    flat = flatten_groups(per_sample_grads(agent, partial(ppo_losses, cfg=LossConfig()), *batch))
    n_actor = sum(p.numel() for n, p in agent.named_parameters() if n.startswith("actor"))
    n_critic = sum(p.numel() for n, p in agent.named_parameters() if n.startswith("critic"))
    assert flat["actor"].shape == (16, n_actor) and flat["critic"].shape == (16, n_critic)
    stats_ = gradient_kurtosis({"actor.w": flat["actor"], "critic.w": flat["critic"]})
    assert set(stats_) == {
        "kurtosis/actor_grad_norm",
        "kurtosis/actor_grad_coord",
        "kurtosis/critic_grad_norm",
        "kurtosis/critic_grad_coord",
    }
