"""Top-k mixture-of-experts layer with SwiGLU experts: routing, capacity dropping, dropless path.

Routing (Switch Transformer, Fedus et al. 2021, §2.1-2.2; ST-MoE, Zoph et al. 2022, §3):
router logits h(x) = W_r x in float32 (Switch §2.4, selective precision), p(x) = softmax(h(x)),
the top-k experts per token, combine weights ("gates") chosen by `softmax_before_topk`:

- True (default): gates = the top-k entries of p(x). For k = 1 they are used as they are
  (Switch: y = p_i(x) E_i(x), so the router gets a gradient from the task loss); for k > 1
  they are renormalised to sum to one, as Mixtral (and GShard's top-2) does.
- False: gates = softmax over the k selected logits. For k > 1 this is mathematically the same
  as the renormalised default (softmax restricted to a subset = renormalised softmax); for k = 1
  the gate is always 1 and the router learns only from the auxiliary losses.

Either way the tokens are then sorted by expert and each expert's contiguous block of rows goes
through one grouped GEMM per weight matrix (MegaBlocks, Gale et al. 2022: variable-sized
expert batches instead of padding every expert to a capacity), with two routing paths:

- dropless (capacity_factor=None): every assignment is computed;
- capacity (Switch §2.2): expert capacity C = ceil(capacity_factor · tokens · k / E); an expert's
  assignments beyond the first C in token order are dropped, contributing zero (the residual
  connection around the layer carries those tokens). A token that loses one of its k slots
  keeps the others with their gates unchanged. The number of kept rows is data-dependent.

Auxiliary losses, returned already multiplied by their coefficients:
- load balancing (Switch eq. 4): α · E · Σ_i f_i · P_i, with f_i the fraction of the N·k
  assignments routed to expert i (before any dropping) and P_i the mean router probability;
  it equals α when routing is uniform;
- router z-loss (ST-MoE eq. 5): c_z · mean_n (logsumexp_i h_i(x_n))².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.kernels.backend import check_backend, resolve_backend
from common.kernels.moe.reference import grouped_mm_reference
from common.kernels.moe.triton import grouped_mm


class MoEOutput(NamedTuple):
    output: torch.Tensor  # (B, T, dim)
    aux_loss: torch.Tensor  # scalar, α · E · Σ f_i P_i
    z_loss: torch.Tensor  # scalar, c_z · mean logsumexp(logits)²
    tokens_per_expert: torch.Tensor  # int64 (E,): assignments each expert computed (after drops)


@dataclass
class Routing:
    """The router's decisions for N tokens, in the sorted-by-expert layout the experts use."""

    gates: torch.Tensor  # (N, k) combine weights
    order: torch.Tensor  # (M,) flat assignment ids n·k + j sorted by expert, dropped ones removed
    counts: torch.Tensor  # int64 (E,) kept assignments per expert; sums to M
    aux_loss: torch.Tensor
    z_loss: torch.Tensor


@dataclass(frozen=True)
class RouterConfig:
    """How tokens are routed; shared by `MoE` and `ExpertParallelMoE`."""

    top_k: int
    softmax_before_topk: bool = True
    capacity_factor: float | None = None  # None: dropless
    aux_loss_coef: float = 0.01  # α of Switch eq. 4
    z_loss_coef: float = 1e-3  # c_z of ST-MoE eq. 5


def route(x: torch.Tensor, router_weight: torch.Tensor, config: RouterConfig) -> Routing:
    """Top-k routing of tokens x (N, dim) with router weight (E, dim); see the module docstring."""
    top_k, capacity_factor = config.top_k, config.capacity_factor
    num_tokens, num_experts = x.shape[0], router_weight.shape[0]
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        logits = F.linear(x.to(dtype), router_weight.to(dtype))
    probs = logits.softmax(dim=-1)
    if config.softmax_before_topk:
        gates, expert_ids = probs.topk(top_k, dim=-1)
        if top_k > 1:
            gates = gates / gates.sum(dim=-1, keepdim=True)
    else:
        top_logits, expert_ids = logits.topk(top_k, dim=-1)
        gates = top_logits.softmax(dim=-1)

    flat_ids = expert_ids.flatten()
    routed = torch.zeros(num_experts, dtype=torch.int64, device=x.device)
    routed = routed.scatter_add(0, flat_ids, torch.ones_like(flat_ids))
    order = torch.argsort(flat_ids, stable=True)  # stable: token order within each expert
    counts = routed
    if capacity_factor is not None:
        capacity = math.ceil(capacity_factor * num_tokens * top_k / num_experts)
        first = routed.cumsum(0) - routed
        position = torch.arange(order.shape[0], device=x.device) - first[flat_ids[order]]
        order = order[position < capacity]
        counts = routed.clamp(max=capacity)

    if num_tokens == 0:  # no tokens, no loss (the means below would be 0 / 0)
        zero = logits.sum()  # 0, still connected to the router weight
        return Routing(gates, order, counts, zero, zero)
    # Switch eq. 4: f_i = share of assignments to expert i, P_i = mean router probability.
    fraction = routed.to(dtype) / (num_tokens * top_k)
    aux_loss = config.aux_loss_coef * num_experts * (fraction * probs.mean(dim=0)).sum()
    # ST-MoE eq. 5: penalise large router logits.
    z_loss = config.z_loss_coef * logits.logsumexp(dim=-1).square().mean()
    return Routing(gates, order, counts, aux_loss, z_loss)


def experts_swiglu(
    x: torch.Tensor,
    counts: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    """(silu(x W1_e) ⊙ x W3_e) W2_e on rows x (M, dim) sorted by expert, counts[e] rows each.

    Three grouped GEMMs: the Triton kernel for backend "triton", the loop over experts otherwise.
    """
    offsets = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    mm = grouped_mm if backend == "triton" else grouped_mm_reference
    return mm(F.silu(mm(x, w1, offsets)) * mm(x, w3, offsets), w2, offsets)


def combine(y: torch.Tensor, routing: Routing) -> torch.Tensor:
    """out_n = Σ_j gates[n, j] · y[assignment n·k + j]; dropped assignments contribute zero.

    Scatters by unique index then sums over k (deterministic, unlike an atomic index_add).
    """
    num_tokens, top_k = routing.gates.shape
    slots = y.new_zeros(num_tokens * top_k, y.shape[1]).index_copy(0, routing.order, y)
    gates = routing.gates.to(y.dtype).unsqueeze(-1)
    return (slots.view(num_tokens, top_k, y.shape[1]) * gates).sum(dim=1)


def check_input(x: torch.Tensor, dim: int) -> None:
    """Raise unless x is (B, T, dim)."""
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"MoE expects input of shape (B, T, dim={dim}); got {tuple(x.shape)}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert GEMMs run in: autocast's when it is on, else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class MoE(nn.Module):
    """Top-k mixture of SwiGLU experts (Switch / ST-MoE routing, MegaBlocks-style dropless path).

    Expert weights are stacked for the grouped GEMM: w1, w3 (E, dim, hidden), w2 (E, hidden, dim),
    used as x @ w[e]. Input (B, T, dim) -> `MoEOutput` with output (B, T, dim).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int,
        *,
        capacity_factor: float | None = None,
        softmax_before_topk: bool = True,
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 1e-3,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden_dim", hidden_dim), ("num_experts", num_experts)):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        if capacity_factor is not None and not (0 < capacity_factor < math.inf):
            raise ValueError(
                f"capacity_factor={capacity_factor} must be a finite number > 0, or None for "
                "dropless routing"
            )
        check_backend(backend)
        self.dim, self.hidden_dim, self.num_experts = dim, hidden_dim, num_experts
        self.config = RouterConfig(
            top_k, softmax_before_topk, capacity_factor, aux_loss_coef, z_loss_coef
        )
        self.backend = backend
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Switch §2.4: truncated normal, std = sqrt(0.1 / fan_in), cut at two std."""
        for weight, fan_in in (
            (self.router.weight, self.dim),
            (self.w1, self.dim),
            (self.w3, self.dim),
            (self.w2, self.hidden_dim),
        ):
            std = math.sqrt(0.1 / fan_in)
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> MoEOutput:
        check_input(x, self.dim)
        backend = resolve_backend(self.backend, x)
        tokens = x.reshape(-1, self.dim)
        routing = route(tokens, self.router.weight, self.config)
        dtype = compute_dtype(x)
        y = experts_swiglu(
            tokens.to(dtype)[routing.order // self.config.top_k],
            routing.counts,
            self.w1.to(dtype),
            self.w3.to(dtype),
            self.w2.to(dtype),
            backend,
        )
        out = combine(y, routing).to(x.dtype).view(x.shape)
        return MoEOutput(out, routing.aux_loss, routing.z_loss, routing.counts)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_experts={self.num_experts}, "
            f"{self.config}, backend={self.backend!r}"
        )
