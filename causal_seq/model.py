"""Sequence-model policies over (previous action, observation) tokens: a GRU and a small causal
transformer. Both map tokens (B, T, D_in) to action logits (B, T, A), and act step by step with
`initial_state` / `step`, so one rollout loop drives either (data.rollout)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.kernels.attention import KVCache, attention, decode_attention

MODELS = ("gru", "transformer")
HEAD_DIMS = (32, 64, 128)  # what common.kernels.attention supports


@dataclass
class ModelConfig:
    name: str = "gru"
    hidden: int = 64  # GRU state size / transformer width
    layers: int = 1
    heads: int = 2  # transformer only; hidden / heads must be 32, 64 or 128
    max_len: int = 64  # transformer only: longest episode (learned positions)


class GRUPolicy(nn.Module):
    def __init__(self, token_dim: int, num_actions: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, cfg.hidden)
        self.rnn = nn.GRU(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, num_actions)
        self.layers, self.hidden = cfg.layers, cfg.hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(torch.relu(self.embed(tokens)))
        return self.head(out)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(self.layers, batch, self.hidden, device=self.head.weight.device)

    def step(self, token: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.rnn(torch.relu(self.embed(token[:, None])), state)
        return self.head(out[:, 0]), state


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `common.kernels.attention`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads or width // heads not in HEAD_DIMS:
            raise ValueError(
                f"model.hidden={width} / model.heads={heads} must give a head dim in {HEAD_DIMS}"
            )
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Causal attention over x (B, T, W). With `cache`, x holds the newest position(s):
        their keys/values are appended and they attend to everything cached (decoding)."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if cache is None:
            out = attention(q, k, v, causal=True)
        else:
            cache.append(k, v)
            out = decode_attention(q, cache)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class TransformerPolicy(nn.Module):
    """Decoder-only transformer; acting decodes one step at a time with a key/value cache."""

    def __init__(self, token_dim: int, num_actions: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, cfg.hidden)
        self.position = nn.Embedding(cfg.max_len, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, num_actions)
        self.max_len = cfg.max_len

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence of {length} tokens > model.max_len={self.max_len}")
        x = self.embed(tokens) + self.position(torch.arange(length, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def initial_state(self, batch: int) -> list[KVCache]:
        """One empty key/value cache per block, sized for a whole episode."""
        weight = self.head.weight
        return [
            KVCache.allocate(
                batch,
                block.attn.heads,
                self.max_len,
                self.embed.out_features // block.attn.heads,
                dtype=weight.dtype,
                device=weight.device,
            )
            for block in self.blocks
        ]

    def step(self, token: torch.Tensor, state: list[KVCache]) -> tuple[torch.Tensor, list]:
        position = state[0].length
        if position >= self.max_len:
            raise ValueError(f"decoding step {position} >= model.max_len={self.max_len}")
        x = self.embed(token[:, None]) + self.position.weight[position]
        for block, cache in zip(self.blocks, state, strict=True):
            x = block(x, cache)
        return self.head(self.norm(x))[:, 0], state


def build_model(token_dim: int, num_actions: int, cfg: ModelConfig) -> nn.Module:
    if cfg.name == "gru":
        return GRUPolicy(token_dim, num_actions, cfg)
    if cfg.name == "transformer":
        return TransformerPolicy(token_dim, num_actions, cfg)
    raise ValueError(f"model.name={cfg.name!r}; allowed: {MODELS}")


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, norms and 1-d gains are not decayed)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)
