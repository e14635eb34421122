"""Linear recurrence h_t = a_t ⊙ h_{t-1} + b_t with resets: the scan of S5 and resettable S5.

S5 (Smith et al. 2023) runs the diagonal discretised SSM x_k = Ā ⊙ x_{k-1} + B̄ u_k as an
associative scan over elements (a, b) = (Ā, B̄ u) with the operator
(a_i, b_i) • (a_j, b_j) = (a_j a_i, a_j b_i + b_j).
Resettable S5 (Lu et al. 2023) adds a done flag r to each element,
(a_i, b_i, r_i) • (a_j, b_j, r_j) = (r_j ? a_j : a_j a_i, r_j ? b_j : a_j b_i + b_j, r_i ∨ r_j),
so that episodes of different lengths share one parallel scan.

Semantics (every path, see `reference.linear_scan_reference`):

    h_{-1} = h0 (zero if None)
    h_t    = a_t ⊙ (reset[:, t] ? 0 : h_{t-1}) + b_t

A reset starts a new episode from the zero state, as in the operator above (the reset element
keeps only its own b). `h0` is the state carried in from the previous segment and is used before
t = 0 only, so `linear_scan(a2, b2, reset=r2, h0=h_last_of_segment_1)` continues one long scan
exactly, resets included; reset[:, 0] = True discards h0. To start episodes from a non-zero state
s instead, pass b + reset[..., None] * a * s (and h0 = s for the first episode).

Backends (`common.kernels.backend.resolve_backend`): "auto" is the Triton kernel for CUDA tensors
of the dtypes it takes (`TRITON_DTYPES`) and the sequential reference otherwise; "triton" also
runs on CPU under TRITON_INTERPRET=1 (tests); "reference" is the plain-torch loop. Also exported,
outside the dispatch: `linear_scan_chunked` (plain torch, 2·sqrt(T) sequential steps: faster
than the loop on CPU when B·N is small, see README.md) and `linear_scan_associative` (torch's
`torch._higher_order_ops.associative_scan`, which runs eagerly on CPU in torch 2.13 with
combine_mode="generic"; a cross-check of the operator, used in tests).
"""

from __future__ import annotations

import torch

from common.kernels.backend import resolve_backend
from common.kernels.scan.chunked import linear_scan_chunked
from common.kernels.scan.reference import (
    linear_scan_associative,
    linear_scan_reference,
    resettable_operator,
)
from common.kernels.scan.triton import TRITON_DTYPES, linear_scan_triton

__all__ = [
    "linear_scan",
    "linear_scan_associative",
    "linear_scan_chunked",
    "linear_scan_reference",
    "resettable_operator",
]


def _check_inputs(
    a: torch.Tensor, b: torch.Tensor, reset: torch.Tensor | None, h0: torch.Tensor | None
) -> None:
    """Raise a ValueError naming the offending shapes, dtypes or devices."""
    if a.dim() != 3:
        raise ValueError(f"a must have shape (B, T, N); got a.shape={tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(
            f"b must have a's shape; got a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}"
        )
    if a.shape[1] == 0:
        raise ValueError(f"the scan needs at least one time step; got a.shape={tuple(a.shape)}")
    if not (a.is_floating_point() or a.is_complex()):
        raise ValueError(f"a and b must be floating point or complex; got a.dtype={a.dtype}")
    batch, steps, channels = a.shape
    named = {"a": a, "b": b, "h0": h0}
    for name, x in named.items():
        if x is not None and x.dtype != a.dtype:
            raise ValueError(f"{name}.dtype={x.dtype} differs from a.dtype={a.dtype}")
    named["reset"] = reset
    for name, x in named.items():
        if x is not None and x.device != a.device:
            raise ValueError(f"{name} is on {x.device} but a is on {a.device}")
    if reset is not None:
        if reset.shape != (batch, steps):
            expected = (batch, steps)
            raise ValueError(
                f"reset must have shape (B, T) = {expected}; got reset.shape={tuple(reset.shape)}"
            )
        if reset.dtype != torch.bool:
            raise ValueError(f"reset must be a bool tensor; got reset.dtype={reset.dtype}")
    if h0 is not None and h0.shape != (batch, channels):
        raise ValueError(
            f"h0 must have shape (B, N) = {(batch, channels)}; got h0.shape={tuple(h0.shape)}"
        )


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    reset: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """All states h (B, T, N) and the final state h_last = h[:, -1] (B, N) of the resettable scan.

    a, b: (B, T, N), real or complex, same dtype and device; reset: bool (B, T) or None;
    h0: (B, N) or None (zero), the state before t = 0. Differentiable in a, b and h0.
    """
    _check_inputs(a, b, reset, h0)
    if resolve_backend(backend, a, b, dtypes=TRITON_DTYPES) == "reference":
        return linear_scan_reference(a, b, reset, h0)
    h = linear_scan_triton(a, b, reset, h0).to(a.dtype)  # float32 state for half inputs
    return h, h[:, -1]
