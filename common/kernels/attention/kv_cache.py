"""Key/value cache for incremental decoding with causal (optionally sliding-window) attention.

Keys and values live in preallocated (B, H_kv, max_len, D) buffers; `append` writes the newest
tokens, `view` returns the filled part. With a sliding window w, only the last w - 1 tokens
can still be seen by a future query, so when the buffer is full the older ones are dropped
(the kept ones are moved to the front: one copy every max_len - w + 1 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.kernels.attention.reference import attention_mask, masked_attention


@dataclass
class KVCache:
    """Preallocated keys/values; slot s holds absolute position `start + s`."""

    k: torch.Tensor
    v: torch.Tensor
    window: int | None = None
    length: int = 0
    start: int = 0

    @classmethod
    def allocate(
        cls,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        window: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        if max_len < 1:
            raise ValueError(f"max_len={max_len} must be >= 1")
        if window is not None and not 1 <= window <= max_len:
            raise ValueError(f"window={window} must lie in [1, max_len={max_len}]")
        shape = (batch, kv_heads, max_len, head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
            window,
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Write (B, H_kv, t, D) keys/values of the t newest tokens."""
        expected = (self.k.shape[0], self.k.shape[1], k_new.shape[2], self.k.shape[3])
        if tuple(k_new.shape) != expected or k_new.shape != v_new.shape:
            raise ValueError(
                f"append expects k and v of shape {expected} (B, H_kv, t, D) for this cache; "
                f"got k {tuple(k_new.shape)}, v {tuple(v_new.shape)}"
            )
        t = k_new.shape[2]
        if self.length + t > self.max_len:
            self._drop_unseeable(t)
        self.k[:, :, self.length : self.length + t] = k_new
        self.v[:, :, self.length : self.length + t] = v_new
        self.length += t

    def _drop_unseeable(self, incoming: int) -> None:
        if self.window is None:
            raise ValueError(
                f"KV cache full: {self.length} cached + {incoming} new tokens > "
                f"max_len={self.max_len} (allocate more, or use a sliding window)"
            )
        keep = min(self.length, self.window - 1)
        if keep + incoming > self.max_len:
            raise ValueError(
                f"appending {incoming} tokens to a window-{self.window} cache needs "
                f"max_len >= {keep + incoming}, have {self.max_len}"
            )
        drop = self.length - keep
        self.k[:, :, :keep] = self.k[:, :, drop : self.length].clone()
        self.v[:, :, :keep] = self.v[:, :, drop : self.length].clone()
        self.length, self.start = keep, self.start + drop

    def rewind(self, length: int) -> None:
        """Forget every token after the first `length` cached ones (e.g. to ask several
        questions after one prefilled context). Not for a window cache that dropped tokens."""
        if self.start or not 0 <= length <= self.length:
            raise ValueError(
                f"cannot rewind to {length}: the cache holds positions {self.start}…"
                f"{self.start + self.length - 1}"
            )
        self.length = length

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys and values, (B, H_kv, length, D) each."""
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


def decode_attention(
    q: torch.Tensor, cache: KVCache, *, scale: float | None = None
) -> torch.Tensor:
    """Attention of the t newest queries (B, H, t, D), whose keys/values were just appended, to
    the cache: causal, and windowed when the cache has a window. Returns (B, H, t, D)."""
    k, v = cache.view()
    if q.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q must be (B, H, t, D) matching the cache's (B, H_kv, L, D) = {tuple(k.shape)}; "
            f"got {tuple(q.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, not a multiple of the {k.shape[1]} kv heads")
    if not 1 <= q.shape[2] <= cache.length:
        raise ValueError(
            f"{q.shape[2]} queries but {cache.length} cached tokens: append the new tokens' "
            "keys/values first"
        )
    if q.dtype != k.dtype or q.device != k.device:
        raise ValueError(f"q is {q.dtype} on {q.device}, the cache {k.dtype} on {k.device}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = attention_mask(
        q.shape[2],
        k.shape[2],
        causal=True,
        window=cache.window,
        q_offset=k.shape[2] - q.shape[2],
        device=q.device,
    )
    if q.dtype == torch.float64:
        return masked_attention(q, k, v, mask, scale)[0]
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
