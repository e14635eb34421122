"""The chunked scan of `triton.py` in plain torch: 2·sqrt(T) sequential steps instead of T.

h_t = a_t ⊙ h_{t-1} + b_t with resets (S5, Smith et al. 2023; resettable S5, Lu et al. 2023),
semantics as in `reference.linear_scan_reference`. Time is cut into K chunks of C steps:

1. all chunks at once, C steps: the inclusive prefixes (A_t, B_t, R_t) of each chunk under the
   resettable operator (`reference.resettable_operator`);
2. K steps: the state before each chunk, h_carry <- R ? B : A h_carry + B at the chunk's end;
3. one elementwise step: h_t = R_t ? B_t : A_t h_carry + B_t.

Products of a only ever run inside one chunk, through the operator (no cumprod, no division).
Autograd differentiates through it; memory is about three times that of the sequential loop.
"""

from __future__ import annotations

import math

import torch

from common.kernels.scan.reference import resettable_operator


def linear_scan_chunked(
    a: torch.Tensor,
    b: torch.Tensor,
    reset: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same inputs and outputs as `linear_scan_reference`; `chunk` defaults to ceil(sqrt(T))."""
    batch, steps, channels = a.shape
    size = chunk or math.isqrt(steps - 1) + 1
    count = -(-steps // size)
    pad = count * size - steps
    if reset is None:
        reset = torch.zeros(batch, steps, dtype=torch.bool, device=a.device)
    # Padding sits after the last real step, so its values never reach a returned state.
    a_chunks = torch.cat([a, a.new_zeros(batch, pad, channels)], 1).view(batch, count, size, -1)
    b_chunks = torch.cat([b, b.new_zeros(batch, pad, channels)], 1).view(batch, count, size, -1)
    r_chunks = torch.cat([reset, reset.new_zeros(batch, pad)], 1).view(batch, count, size, 1)

    elements = zip(a_chunks.unbind(2), b_chunks.unbind(2), r_chunks.unbind(2), strict=True)
    prefixes = [next(elements)]
    for element in elements:
        prefixes.append(resettable_operator(prefixes[-1], element))
    big_a, big_b, big_r = (torch.stack(x, dim=2) for x in zip(*prefixes, strict=True))

    carry = torch.zeros_like(b[:, 0]) if h0 is None else h0
    carries = []
    for end_a, end_b, end_r in zip(*(x.unbind(1) for x in prefixes[-1]), strict=True):
        carries.append(carry)
        carry = torch.where(end_r, end_b, end_a * carry + end_b)
    carry_in = torch.stack(carries, dim=1)[:, :, None]

    h = torch.where(big_r, big_b, big_a * carry_in + big_b).reshape(batch, count * size, -1)
    h = h[:, :steps]
    return h, h[:, -1]
