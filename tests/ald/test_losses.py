"""V-trace against a hand computation; distillation is zero when actor = learner."""

from types import SimpleNamespace

import torch

from ald.losses import distillation_loss, learner_loss, policy_kl, vtrace


def test_vtrace_matches_a_hand_computed_example():
    # One env, T = 2, γ = 0.9, ρ̄ = c̄ = 1, λ = 1; importance ratios π/μ = 2 (clipped to 1), 0.5.
    behaviour = torch.log(torch.tensor([[0.25, 0.5]]))
    target = torch.log(torch.tensor([[0.5, 0.25]]))
    rewards = torch.tensor([[1.0, 0.0]])
    discounts = torch.tensor([[0.9, 0.9]])
    values = torch.tensor([[0.5, 1.0]])
    bootstrap = torch.tensor([2.0])
    vs, adv = vtrace(behaviour, target, rewards, discounts, values, bootstrap)
    # δ_1 = 0.5 (0 + 0.9·2 − 1) = 0.4            v_1 = 1 + 0.4 = 1.4
    # δ_0 = 1 (1 + 0.9·1 − 0.5) = 1.4;  c_0 = 1;  v_0 = 0.5 + 1.4 + 0.9·1·0.4 = 2.26
    torch.testing.assert_close(vs, torch.tensor([[2.26, 1.4]]))
    # A_0 = 1 (1 + 0.9·1.4 − 0.5) = 1.76;  A_1 = 0.5 (0 + 0.9·2 − 1) = 0.4
    torch.testing.assert_close(adv, torch.tensor([[1.76, 0.4]]))


def test_vtrace_on_policy_is_the_n_step_return_and_stops_at_episode_ends():
    behaviour = target = torch.zeros(1, 3)
    rewards = torch.tensor([[1.0, 1.0, 1.0]])
    discounts = torch.tensor([[0.5, 0.0, 0.5]])  # the episode ends at step 1
    values = torch.zeros(1, 3)
    vs, _ = vtrace(behaviour, target, rewards, discounts, values, torch.tensor([4.0]))
    torch.testing.assert_close(vs, torch.tensor([[1.5, 1.0, 3.0]]))


def test_distillation_and_actor_regulariser_vanish_when_actor_equals_learner():
    logits, values = torch.randn(4, 6, 3), torch.randn(4, 6)
    loss, parts = distillation_loss(logits.clone(), values.clone(), logits, values, 0.5)
    assert loss.abs() < 1e-7 and parts["distill/kl"] < 1e-7
    assert policy_kl(logits, logits).abs().max() < 1e-6
    assert policy_kl(logits, torch.zeros_like(logits)).min() > -1e-7  # KL ≥ 0


def test_learner_loss_adds_the_actor_regulariser_only_when_asked():
    torch.manual_seed(0)
    b, t, a = 2, 5, 3
    batch = {
        "action": torch.randint(0, a, (b, t)),
        "behaviour_logits": torch.randn(b, t, a),
        "reward": torch.rand(b, t),
        "done": torch.zeros(b, t),
    }
    logits, values = torch.randn(b, t + 1, a), torch.randn(b, t + 1)
    rl = SimpleNamespace(gamma=0.99, entropy=0.01, value=0.5, rho_bar=1.0, c_bar=1.0, lam=1.0)
    plain, stats = learner_loss(logits, values, batch, rl, {"actor_reg": 0.0})
    reg, reg_stats = learner_loss(logits, values, batch, rl, {"actor_reg": 2.0})
    kl = policy_kl(batch["behaviour_logits"], logits[:, :-1]).mean()
    torch.testing.assert_close(reg - plain, 2.0 * kl)
    assert "loss/actor_reg" not in stats and reg_stats["loss/actor_reg"] > 0
