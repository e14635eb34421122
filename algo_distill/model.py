"""The Algorithm Distillation transformer (Laskin et al. 2022, §4 and Appendix A).

A causal transformer over one token per environment step,
    x_t = E_row[row(o_t)] + E_col[col(o_t)] + E_act[a_{t-1}] + E_rew[r_{t-1}] + E_step[t mod T],
(the cell o_t embedded as its row plus its column, so that "go to the cell where the reward
was" carries over to goal cells never rewarded in training), trained to predict a_t with
cross-entropy (AD: on learning histories; ED: on expert histories).
Attention goes through `common.kernels.attention` with a causal sliding window of
`context_len` steps. There are no absolute positional embeddings (the causal mask orders the
tokens and E_step places them in their episode), so a token's keys do not depend on where the
window starts: decoding with a sliding-window KV cache is exactly the full-history forward with
the same window mask, however long the in-context rollout runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from algo_distill.data import NO_ACTION, TOKEN_FIELDS
from algo_distill.envs import NUM_ACTIONS
from common.kernels.attention import KVCache, attention, decode_attention

HEAD_DIMS = (32, 64, 128)  # what common.kernels.attention supports


@dataclass
class ModelConfig:
    hidden: int = 64  # embedding width (paper: 64)
    layers: int = 4  # transformer blocks (paper: 4)
    heads: int = 2  # attention heads; hidden / heads must be 32, 64 or 128
    ff: int = 256  # feed-forward width (paper: 2048)
    dropout: float = 0.0  # residual / embedding dropout (paper: 0.1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal sliding-window self-attention through `common.kernels.attention`."""

    def __init__(self, width: int, heads: int, window: int) -> None:
        super().__init__()
        if width % heads or width // heads not in HEAD_DIMS:
            raise ValueError(
                f"model.hidden={width} / model.heads={heads} must give a head dim in {HEAD_DIMS}"
            )
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, W). With `cache`, x holds the newest step(s): their keys/values are appended
        and they attend to the cached window (decoding)."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if cache is None:
            window = self.window if length > self.window else None
            out = attention(q, k, v, causal=True, window=window)
        else:
            cache.append(k, v)
            out = decode_attention(q, cache)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block (the paper uses post-norm; pre-norm trains more stably)."""

    def __init__(self, cfg: ModelConfig, window: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.hidden), nn.LayerNorm(cfg.hidden)
        self.attn = CausalSelfAttention(cfg.hidden, cfg.heads, window)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.ff), nn.GELU(), nn.Linear(cfg.ff, cfg.hidden)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class AlgorithmDistillationTransformer(nn.Module):
    """Maps step tokens {field: (B, T)} to action logits (B, T, A); acts with a KV cache."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        size: int,
        num_actions: int,
        episode_len: int,
        context_len: int,
    ) -> None:
        super().__init__()
        self.cfg, self.context_len, self.size = cfg, context_len, size
        self.embed = nn.ModuleDict(
            {
                "row": nn.Embedding(size, cfg.hidden),
                "col": nn.Embedding(size, cfg.hidden),
                "prev_action": nn.Embedding(NO_ACTION + 1, cfg.hidden),
                "prev_reward": nn.Embedding(2, cfg.hidden),
                "timestep": nn.Embedding(episode_len, cfg.hidden),
            }
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, context_len) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, num_actions)

    def _embed(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        obs = tokens["obs"]
        x = self.embed["row"](obs // self.size) + self.embed["col"](obs % self.size)
        for field in TOKEN_FIELDS[1:]:
            x = x + self.embed[field](tokens[field])
        return self.drop(x)

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self._embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def initial_state(self, batch: int) -> list[KVCache]:
        """One empty sliding-window cache per block (2 windows long: one copy per window)."""
        weight = self.head.weight
        return [
            KVCache.allocate(
                batch,
                self.cfg.heads,
                2 * self.context_len,
                self.cfg.hidden // self.cfg.heads,
                window=self.context_len,
                dtype=weight.dtype,
                device=weight.device,
            )
            for _ in self.blocks
        ]

    def step(
        self, token: dict[str, torch.Tensor], state: list[KVCache]
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """Logits (B, A) for one new step token {field: (B,)}, attending to the cached window."""
        x = self._embed({k: v[:, None] for k, v in token.items()})
        for block, cache in zip(self.blocks, state, strict=True):
            x = block(x, cache)
        return self.head(self.norm(x))[:, 0], state

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 · matrix parameters + attention (nanoGPT's estimate)."""
        matrices = sum(
            p.numel() for n, p in self.named_parameters() if p.dim() == 2 and "embed" not in n
        )
        return 6 * matrices + 12 * self.cfg.layers * self.cfg.hidden * self.context_len


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on linear weights only (not biases, norms or embeddings)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def build_model(
    model_cfg: dict, env: dict, context_episodes: int
) -> AlgorithmDistillationTransformer:
    """The model for an environment (a dataset manifest's `env`) and a context of
    `context_episodes` episodes."""
    return AlgorithmDistillationTransformer(
        ModelConfig(**model_cfg),
        size=env["size"],
        num_actions=NUM_ACTIONS,
        episode_len=env["episode_len"],
        context_len=context_episodes * env["episode_len"],
    )
