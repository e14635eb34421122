"""Expert parallelism: the experts of an `MoE` sharded over the ranks of a process group.

GShard (Lepikhin et al. 2021) / Switch (Fedus et al. 2021, §5.4) style: every rank keeps the
router (replicated; average or sum its gradient over ranks like any data-parallel weight) and
E / world experts, rank r holding experts [r·E/world, (r+1)·E/world). Each rank routes its own
tokens, sorts them by expert (so they are grouped by destination rank), exchanges the per-expert
counts with one all-to-all, sends the tokens with `all_to_all_single` (dispatch), runs its local
experts with the grouped GEMM, and sends the results back the same way (combine). The backward
pass of each all-to-all is the all-to-all with the splits swapped.

Every token's output is what the single-process layer computes for it, so a rank's output equals
`MoE` applied to that rank's tokens alone. In particular capacity routing counts capacity over
the rank's own tokens (GShard's per-group capacity), and the auxiliary losses and
`tokens_per_expert` are those of the rank's tokens.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from common.kernels.backend import resolve_backend
from common.kernels.moe.layer import (
    MoE,
    MoEOutput,
    check_input,
    combine,
    compute_dtype,
    experts_swiglu,
    route,
)


class _AllToAll(torch.autograd.Function):
    """`all_to_all_single` with uneven splits; its gradient is the reverse all-to-all."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        output_splits: list[int],
        input_splits: list[int],
        group: dist.ProcessGroup | None,
    ) -> torch.Tensor:
        ctx.splits, ctx.group = (output_splits, input_splits), group
        out = x.new_empty(sum(output_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        output_splits, input_splits = ctx.splits
        out = grad.new_empty(sum(input_splits), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), input_splits, output_splits, group=ctx.group)
        return out, None, None, None


def all_to_all(
    x: torch.Tensor,
    output_splits: list[int],
    input_splits: list[int],
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Differentiable all-to-all of the rows of x: input_splits[r] rows go to rank r."""
    return _AllToAll.apply(x, output_splits, input_splits, group)


class ExpertParallelMoE(nn.Module):
    """The experts of `moe` sharded over `group`; call it on this rank's tokens (B, T, dim).

    Built from a full `MoE` (the same on every rank, e.g. after seeding) by copying the router
    and this rank's slice of w1, w3, w2.
    """

    def __init__(self, moe: MoE, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.group = group
        self.world_size = dist.get_world_size(group)
        rank = dist.get_rank(group)
        if moe.num_experts % self.world_size:
            raise ValueError(
                f"num_experts={moe.num_experts} must be divisible by the process group's "
                f"world size {self.world_size} to shard the experts evenly"
            )
        self.dim, self.num_experts = moe.dim, moe.num_experts
        self.config, self.backend = moe.config, moe.backend
        self.num_local_experts = moe.num_experts // self.world_size
        local = slice(rank * self.num_local_experts, (rank + 1) * self.num_local_experts)
        self.router = copy.deepcopy(moe.router)
        self.w1 = nn.Parameter(moe.w1.detach()[local].clone())
        self.w3 = nn.Parameter(moe.w3.detach()[local].clone())
        self.w2 = nn.Parameter(moe.w2.detach()[local].clone())

    def forward(self, x: torch.Tensor) -> MoEOutput:
        check_input(x, self.dim)
        backend = resolve_backend(self.backend, x)
        tokens = x.reshape(-1, self.dim)
        routing = route(tokens, self.router.weight, self.config)
        dtype = compute_dtype(x)
        world, local_experts = self.world_size, self.num_local_experts

        # Exchange counts first: rank r receives, from every source rank, its counts for r's
        # experts, laid out (source, local expert).
        received_counts = torch.empty_like(routing.counts)
        dist.all_to_all_single(received_counts, routing.counts, group=self.group)
        received_counts = received_counts.view(world, local_experts)
        input_splits = routing.counts.view(world, local_experts).sum(dim=1).tolist()
        output_splits = received_counts.sum(dim=1).tolist()

        # Dispatch: rows sorted by global expert are already grouped by destination rank.
        sent = tokens.to(dtype)[routing.order // self.config.top_k]
        received = all_to_all(sent, output_splits, input_splits, self.group)
        # Regroup the received rows (source, expert) -> (expert, source) for the grouped GEMM.
        local_ids = torch.arange(local_experts, device=x.device).repeat(world)
        by_expert = torch.argsort(
            torch.repeat_interleave(local_ids, received_counts.flatten()), stable=True
        )
        y = experts_swiglu(
            received[by_expert],
            received_counts.sum(dim=0),
            self.w1.to(dtype),
            self.w3.to(dtype),
            self.w2.to(dtype),
            backend,
        )
        y = torch.empty_like(y).index_copy(0, by_expert, y)
        # Combine: send the results back to the ranks that own the tokens.
        y = all_to_all(y, input_splits, output_splits, self.group)
        out = combine(y, routing).to(x.dtype).view(x.shape)
        return MoEOutput(out, routing.aux_loss, routing.z_loss, routing.counts)
