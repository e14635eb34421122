"""Plain-PyTorch linear scans: the sequential reference and an associative-scan cross-check.

The recurrence is the diagonal discretised SSM of S5 (Smith et al. 2023),
x_k = Ā ⊙ x_{k-1} + B̄ u_k, written as h_t = a_t ⊙ h_{t-1} + b_t with a_t = Ā_t, b_t = B̄ u_t,
plus the done flags of resettable S5 (Lu et al. 2023): where reset[:, t] is True a new
episode starts at t and the state before it is zero, h_t = b_t. `h0` is the state before t = 0
only (the state carried in from a previous segment); it is not re-injected at later resets.
"""

from __future__ import annotations

import torch
from torch._higher_order_ops import associative_scan

Element = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def linear_scan_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    reset: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential loop over t, differentiable; works in float64 and complex128.

    a, b: (B, T, N); reset: bool (B, T) or None; h0: (B, N) or None (zero).
    Returns h (B, T, N) and h_last = h[:, -1] (B, N).
    """
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    flags = [None] * a.shape[1] if reset is None else reset[:, :, None].unbind(1)
    states = []
    # unbind, not a[:, t]: the backward of T selects would build T full-size zero tensors.
    for a_t, b_t, r_t in zip(a.unbind(1), b.unbind(1), flags, strict=True):
        if r_t is not None:
            # Lu et al. 2023: a done flag restarts the recurrence, h_{t-1} := 0.
            h = torch.where(r_t, torch.zeros_like(h), h)
        h = a_t * h + b_t
        states.append(h)
    out = torch.stack(states, dim=1)
    return out, out[:, -1]


def resettable_operator(left: Element, right: Element) -> Element:
    """The resettable S5 binary operator (Lu et al. 2023) on (a, b, reset) elements:

    (a_i, b_i, r_i) • (a_j, b_j, r_j) = (r_j ? a_j : a_j a_i, r_j ? b_j : a_j b_i + b_j, r_i ∨ r_j).
    Without resets it is the S5 scan operator (a_j a_i, a_j b_i + b_j) (Smith et al. 2023).
    """
    a_i, b_i, r_i = left
    a_j, b_j, r_j = right
    return (
        torch.where(r_j, a_j, a_j * a_i),
        torch.where(r_j, b_j, a_j * b_i + b_j),
        r_i | r_j,
    )


def linear_scan_associative(
    a: torch.Tensor,
    b: torch.Tensor,
    reset: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same scan as `linear_scan_reference` through torch's `associative_scan` higher-order op.

    A cross-check of the operator and of the h0 / reset semantics, not a fast path: in torch 2.13
    it runs eagerly on CPU with combine_mode="generic" (a log-depth scan of tensor ops).
    h0 enters as the state before t = 0: b_0 <- a_0 h0 + b_0 unless reset[:, 0].
    """
    flags = torch.zeros(a.shape[:2], dtype=torch.bool, device=a.device) if reset is None else reset
    flags = flags[:, :, None].expand(a.shape)
    if h0 is not None:
        first = torch.where(flags[:, 0], b[:, 0], a[:, 0] * h0 + b[:, 0])
        b = torch.cat([first[:, None], b[:, 1:]], dim=1)
    _, h, _ = associative_scan(resettable_operator, (a, b, flags), dim=1, combine_mode="generic")
    return h, h[:, -1]
