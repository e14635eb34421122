"""The learner's off-policy RL loss (V-trace) and the actor-learner distillation losses.

V-trace (Espeholt et al. 2018, §4.1) corrects for the gap between the behaviour policy μ that
collected an unroll (the actor: a lagged LSTM for ALD) and the learner's policy π. ALD
(Parisotto & Salakhutdinov 2021, §4) adds: the actor is distilled from the learner (policy KL
+ value regression on actor-collected states), and the learner is pulled toward the actor's
policy, which keeps the off-policy gap that V-trace has to correct small.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def vtrace(
    behaviour_log_prob: torch.Tensor,
    target_log_prob: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets v_s and policy-gradient advantages over (B, T) unrolls (eq. 1):

        δ_t = ρ_t (r_t + γ_t V(x_{t+1}) − V(x_t)),   ρ_t = min(ρ̄, π/μ),  c_t = λ min(c̄, π/μ)
        v_t − V(x_t) = δ_t + γ_t c_t (v_{t+1} − V(x_{t+1}))
        A_t = ρ_t (r_t + γ_t v_{t+1} − V(x_t))

    `discounts` is γ_t = γ · (1 − done_t). Everything is computed without gradient."""
    with torch.no_grad():
        ratio = (target_log_prob - behaviour_log_prob).exp()
        rho = ratio.clamp(max=rho_bar)
        c = lam * ratio.clamp(max=c_bar)
        next_values = torch.cat([values[:, 1:], bootstrap_value[:, None]], dim=1)
        deltas = rho * (rewards + discounts * next_values - values)
        correction = torch.zeros_like(bootstrap_value)
        corrections = torch.empty_like(values)
        for t in reversed(range(values.shape[1])):
            correction = deltas[:, t] + discounts[:, t] * c[:, t] * correction
            corrections[:, t] = correction
        vs = values + corrections
        next_vs = torch.cat([vs[:, 1:], bootstrap_value[:, None]], dim=1)
        advantages = rho * (rewards + discounts * next_vs - values)
    return vs, advantages


def policy_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per position, summed over actions."""
    teacher = F.log_softmax(teacher_logits, dim=-1)
    student = F.log_softmax(student_logits, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1)


def learner_loss(
    logits: torch.Tensor,
    values: torch.Tensor,
    batch: dict[str, torch.Tensor],
    rl: Any,
    coefs: dict[str, float],
) -> tuple[torch.Tensor, dict[str, float]]:
    """IMPALA's loss on one unroll batch: logits (B, T + 1, A) and values (B, T + 1) of the
    learner on the T steps and the bootstrap step, with the coefficients of `rl` (gamma,
    rho_bar, c_bar, lam, value, entropy); plus,
    for ALD, `coefs["actor_reg"]` · KL(μ ‖ π) pulling the learner toward the actor's policy."""
    log_probs = F.log_softmax(logits[:, :-1], dim=-1)
    actions = batch["action"]
    target_log_prob = log_probs.gather(-1, actions[..., None]).squeeze(-1)
    behaviour_log_probs = F.log_softmax(batch["behaviour_logits"], dim=-1)
    behaviour_log_prob = behaviour_log_probs.gather(-1, actions[..., None]).squeeze(-1)
    discounts = rl.gamma * (1.0 - batch["done"])
    vs, advantages = vtrace(
        behaviour_log_prob,
        target_log_prob.detach(),
        batch["reward"],
        discounts,
        values[:, :-1].detach(),
        values[:, -1].detach(),
        rl.rho_bar,
        rl.c_bar,
        rl.lam,
    )
    policy = -(advantages * target_log_prob).mean()
    value = 0.5 * (vs - values[:, :-1]).pow(2).mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    loss = policy + rl.value * value - rl.entropy * entropy
    stats = {
        "loss/policy": policy.item(),
        "loss/value": value.item(),
        "entropy": entropy.item(),
        "rho_mean": (target_log_prob - behaviour_log_prob).exp().mean().item(),
    }
    if coefs["actor_reg"] > 0:
        reg = policy_kl(batch["behaviour_logits"], logits[:, :-1]).mean()
        loss = loss + coefs["actor_reg"] * reg
        stats["loss/actor_reg"] = reg.item()
    return loss, stats


def distillation_loss(
    actor_logits: torch.Tensor,
    actor_values: torch.Tensor,
    learner_logits: torch.Tensor,
    learner_values: torch.Tensor,
    value_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ALD's actor objective (§4): KL(π_learner ‖ π_actor) + value_coef · (V_actor − V_learner)²
    on actor-collected states; the learner's outputs are fixed targets."""
    kl = policy_kl(learner_logits.detach(), actor_logits).mean()
    value = (actor_values - learner_values.detach()).pow(2).mean()
    return kl + value_coef * value, {"distill/kl": kl.item(), "distill/value": value.item()}
