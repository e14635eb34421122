"""Actor and learner networks of ALD (Parisotto & Salakhutdinov 2021, §4).

Both map observations to policy logits and a value, and share one recurrent interface:

    logits, value, state = net(obs, first, state)      # obs (B, T, obs_dim), first (B, T) bool
    net.initial_state(B)                               # the state before any step

`first[b, t]` marks the first step of an episode. The LSTM zeroes its state there; the GTrXL's
memory is a sliding window over the environment stream (Transformer-XL's segment recurrence,
Dai et al. 2019 §3.2) and is not cut at episode boundaries: the memory span is a config choice
(`model.memory`), see the README. `state_after=n` returns the state after the first n steps
(the learner's unrolls carry one extra bootstrap step that belongs to the next unroll).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.kernels.attention import KVCache, attention, decode_attention


class LSTMNet(nn.Module):
    """The cheap actor (and the LSTM-alone baseline): encoder, one LSTM cell, policy/value heads."""

    def __init__(self, obs_dim: int, num_actions: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.encoder = nn.Sequential(nn.Linear(obs_dim, width), nn.ReLU())
        self.cell = nn.LSTMCell(width, width)
        self.policy = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1)

    def initial_state(self, batch: int) -> torch.Tensor:
        """(h, c) stacked: (2, B, width)."""
        return torch.zeros(2, batch, self.width, device=self.policy.weight.device)

    def forward(
        self,
        obs: torch.Tensor,
        first: torch.Tensor,
        state: torch.Tensor,
        state_after: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.encoder(obs)
        keep = (~first).to(x.dtype).unsqueeze(-1)
        h, c = state[0], state[1]
        outputs, saved = [], None
        for t in range(x.shape[1]):
            if t == state_after:
                saved = torch.stack([h, c])
            h, c = self.cell(x[:, t], (h * keep[:, t], c * keep[:, t]))
            outputs.append(h)
        out = torch.stack(outputs, dim=1)
        new_state = torch.stack([h, c]) if saved is None else saved
        return self.policy(out), self.value(out).squeeze(-1), new_state


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of x (..., T, D) at integer positions (T,):
    pairs of channels rotated by position · 10000^(−2i/D). Scores then depend on distance only,
    the property Transformer-XL's relative encoding provides for attention over memory."""
    half = x.shape[-1] // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float64) / half
    )
    angle = positions.to(torch.float64)[:, None] * freq[None, :]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class GRUGate(nn.Module):
    """GTrXL's GRU-type gating layer (Parisotto et al. 2020, §3.2, eqs. for g^GRU):
    r = σ(W_r y + U_r x), z = σ(W_z y + U_z x − b_g), ĥ = tanh(W_g y + U_g (r ⊙ x)),
    g(x, y) = (1 − z) ⊙ x + z ⊙ ĥ; b_g > 0 starts each block near the identity map."""

    def __init__(self, dim: int, bias: float) -> None:
        super().__init__()
        self.w = nn.Linear(dim, 3 * dim, bias=False)
        self.u_rz = nn.Linear(dim, 2 * dim, bias=False)
        self.u_g = nn.Linear(dim, dim, bias=False)
        self.bias = bias

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wr, wz, wg = self.w(y).chunk(3, dim=-1)
        ur, uz = self.u_rz(x).chunk(2, dim=-1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.bias)
        h = torch.tanh(wg + self.u_g(r * x))
        return (1 - z) * x + z * h


class GTrXLBlock(nn.Module):
    """One GTrXL block: identity-map reordering (layer norm on the sublayer inputs only, ReLU on
    their outputs) with GRU gates in place of the residual additions (Parisotto et al. 2020)."""

    def __init__(self, dim: int, heads: int, gate_bias: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.gate_attn = GRUGate(dim, gate_bias)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.gate_mlp = GRUGate(dim, gate_bias)

    def _qkv(self, window: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, _ = window.shape
        q, k, v = self.qkv(self.norm_attn(window)).chunk(3, dim=-1)
        split = (b, n, self.heads, self.head_dim)
        positions = torch.arange(n, device=window.device)
        q, k = (rope(t.view(split).transpose(1, 2), positions) for t in (q, k))
        return q, k, v.view(split).transpose(1, 2)

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attended.shape
        y = self.out(attended.transpose(1, 2).reshape(b, t, -1))
        x = self.gate_attn(x, torch.relu(y))
        return self.gate_mlp(x, torch.relu(self.mlp(self.norm_mlp(x))))

    def forward(self, memory: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) attends causally to itself and the M memory states before it (B, M, D):
        each query sees the M + 1 newest positions up to its own (Transformer-XL's span)."""
        m, t = memory.shape[1], x.shape[1]
        q, k, v = self._qkv(torch.cat([memory, x], dim=1))
        if t == 1:  # acting: one query, no work for the memory positions' queries
            cache = KVCache(k, v, window=m + 1, length=m + 1)
            attended = decode_attention(q[:, :, -1:], cache)
        else:
            attended = attention(q, k, v, causal=True, window=m + 1)[:, :, m:]
        return self._finish(x, attended)


class GTrXL(nn.Module):
    """Gated Transformer-XL policy + value (Parisotto et al. 2020). The state is the memory: the
    inputs of every block at the last M positions, (layers, B, M, D), carried without gradient
    (Transformer-XL's stop-gradient memory); it starts as zeros."""

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        width: int,
        layers: int,
        heads: int,
        memory: int,
        gate_bias: float = 2.0,
    ) -> None:
        super().__init__()
        self.width, self.memory = width, memory
        self.encoder = nn.Linear(obs_dim, width)
        self.blocks = nn.ModuleList(GTrXLBlock(width, heads, gate_bias) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.policy = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(
            len(self.blocks), batch, self.memory, self.width, device=self.policy.weight.device
        )

    def forward(
        self,
        obs: torch.Tensor,
        first: torch.Tensor,
        state: torch.Tensor,
        state_after: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        del first  # the memory window is not cut at episode starts (module docstring)
        h = self.encoder(obs)
        n = h.shape[1] if state_after is None else state_after
        new_memory = []
        for block, memory in zip(self.blocks, state, strict=True):
            new_memory.append(torch.cat([memory, h[:, :n]], dim=1)[:, -self.memory :].detach())
            h = block(memory, h)
        out = torch.relu(self.norm(h))
        return self.policy(out), self.value(out).squeeze(-1), torch.stack(new_memory)


def build_net(spec: dict, obs_dim: int, num_actions: int) -> LSTMNet | GTrXL:
    """The network a model config describes: {"name": "lstm"|"gtrxl", sizes...}."""
    if spec["name"] == "lstm":
        return LSTMNet(obs_dim, num_actions, spec["width"])
    if spec["name"] == "gtrxl":
        return GTrXL(
            obs_dim,
            num_actions,
            spec["width"],
            spec["layers"],
            spec["heads"],
            spec["memory"],
            spec["gate_bias"],
        )
    raise ValueError(f"model name {spec['name']!r} is not valid: 'lstm' or 'gtrxl'")
