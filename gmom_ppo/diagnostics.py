"""Heavy-tail diagnostics of PPO's gradients (Garg et al. §3–4).

Per-sample gradients of the actor and critic losses come from torch.func (functional_call +
grad + vmap). Their tails are summarised by the kurtosis κ = E[(x − μ)⁴] / E[(x − μ)²]² − 3
(Fisher's excess kurtosis, 0 for a Gaussian, the same estimator as scipy.stats.kurtosis with
bias=True) of (a) the per-sample gradient norms and (b) each coordinate across samples
(median over coordinates), plus the kurtosis of the likelihood ratios and of the advantages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

GROUPS = ("actor", "critic")


def kurtosis(x: torch.Tensor, dim: int = 0, fisher: bool = True) -> torch.Tensor:
    """Sample kurtosis m₄ / m₂² (− 3 if fisher) along `dim`, computed in float64."""
    x = x.double()
    centred = x - x.mean(dim, keepdim=True)
    m2 = centred.pow(2).mean(dim)
    m4 = centred.pow(4).mean(dim)
    value = m4 / m2.pow(2)
    return value - 3.0 if fisher else value


def parameter_group(name: str) -> str:
    """'actor' for the policy's parameters (mean network and log-std), 'critic' otherwise."""
    return "actor" if name.startswith("actor") else "critic"


def per_sample_grads(
    agent: nn.Module,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    *batch: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """∇_θ ℓ_i for every sample i of `batch`: {parameter name: tensor (B, *shape)}.

    `loss_fn(policy, *sample_tensors)` returns per-sample losses with a "total" entry (the
    actor loss depends only on actor parameters and the critic loss only on the critic's, so
    the gradient of the total splits into both).
    """
    params = {name: p.detach() for name, p in agent.named_parameters()}

    def one_sample(params: dict[str, torch.Tensor], *sample: torch.Tensor) -> torch.Tensor:
        def policy(obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return functional_call(agent, params, (obs, actions))

        rows = [t.unsqueeze(0) for t in sample]
        return loss_fn(policy, *rows)["total"].squeeze(0)

    in_dims = (None, *(0 for _ in batch))
    return vmap(grad(one_sample), in_dims=in_dims)(params, *batch)


def flatten_groups(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{'actor': (B, P_actor), 'critic': (B, P_critic)} from per-parameter per-sample grads."""
    flat: dict[str, list[torch.Tensor]] = {group: [] for group in GROUPS}
    for name, g in grads.items():
        flat[parameter_group(name)].append(g.reshape(g.shape[0], -1))
    return {group: torch.cat(parts, dim=1) for group, parts in flat.items()}


def gradient_kurtosis(grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Kurtosis of per-sample gradient norms and median per-coordinate kurtosis, per group."""
    stats = {}
    for group, flat in flatten_groups(grads).items():
        stats[f"kurtosis/{group}_grad_norm"] = kurtosis(flat.norm(dim=1)).item()
        stats[f"kurtosis/{group}_grad_coord"] = kurtosis(flat).nanmedian().item()
    return stats
