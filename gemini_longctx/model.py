"""A decoder-only sparse mixture-of-experts transformer for long context (our recipe, §2 of the
Gemini 1.5 report says only "sparse MoE transformer"; the choices below are ours).

- pre-norm blocks (RMSNorm), attention on `common.kernels.attention` (flash attention on GPU),
  grouped-query heads, rotary positions (Su et al. 2021) with a large base for long context;
- feed-forward: `common.kernels.moe.MoE` (top-k SwiGLU experts, Switch load-balancing loss and
  ST-MoE z-loss) in every `moe_every`-th block, or a dense SwiGLU of the same active size
  (hidden = top_k · expert_hidden) for the dense baseline;
- three ways to run attention: whole sequences (training), a KV cache fed chunk by chunk
  (streaming evaluation, O(T) memory), and ring attention over a process group (context
  parallelism: each rank holds a contiguous chunk of every sequence).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.kernels.attention import KVCache, attention, decode_attention, ring_attention
from common.kernels.moe import MoE

FFN_KINDS = ("moe", "dense")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    dim: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ffn: str = "moe"  # "moe" | "dense"
    num_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 256
    moe_every: int = 1  # MoE in blocks i with i % moe_every == moe_every - 1, dense elsewhere
    capacity_factor: float | None = None  # None = dropless
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 1e-3
    rope_base: float = 500_000.0
    max_context: int = 8192  # the longest context trained for (the harness's default limit)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def dense_hidden(self) -> int:
        """Hidden size of a dense SwiGLU with the active parameters of one MoE layer."""
        return self.top_k * self.expert_hidden

    def is_moe(self, block: int) -> bool:
        return self.ffn == "moe" and block % self.moe_every == self.moe_every - 1


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding of x (B, H, T, D) at integer positions (T,): pairs (x_i, x_{i+D/2})
    rotated by angle p · base^(−2i/D). The angles are computed in float64 and rounded once, so
    positions in the hundreds of thousands keep their precision."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) / half)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = (f(angles).to(x.dtype) for f in (torch.cos, torch.sin))
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, h, kv = cfg.head_dim, cfg.heads, cfg.kv_heads
        self.qkv = nn.Linear(cfg.dim, (h + 2 * kv) * d, bias=False)
        self.out = nn.Linear(h * d, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        group=None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        d, h, kv = self.cfg.head_dim, self.cfg.heads, self.cfg.kv_heads
        q, k, v = self.qkv(x).view(b, t, h + 2 * kv, d).transpose(1, 2).split([h, kv, kv], dim=1)
        q, k = rope(q, positions, self.cfg.rope_base), rope(k, positions, self.cfg.rope_base)
        if cache is not None:
            cache.append(k, v)
            y = decode_attention(q, cache)
        elif group is not None:
            y = ring_attention(q, k, v, causal=True, group=group)
        else:
            y = attention(q, k, v, causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, h * d))


class SwiGLU(nn.Module):
    """Dense feed-forward (silu(x W1) ⊙ x W3) W2, the MoE experts' form."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.attn = Attention(cfg)
        if cfg.is_moe(index):
            self.ffn = MoE(
                cfg.dim,
                cfg.expert_hidden,
                cfg.num_experts,
                cfg.top_k,
                capacity_factor=cfg.capacity_factor,
                aux_loss_coef=cfg.aux_loss_coef,
                z_loss_coef=cfg.z_loss_coef,
            )
        else:
            self.ffn = SwiGLU(cfg.dim, cfg.dense_hidden)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None, group=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns (x, auxiliary loss, tokens per expert or None for a dense block)."""
        x = x + self.attn(self.attn_norm(x), positions, cache, group)
        if isinstance(self.ffn, MoE):
            out = self.ffn(self.ffn_norm(x))
            return x + out.output, out.aux_loss + out.z_loss, out.tokens_per_expert
        return x + self.ffn(self.ffn_norm(x)), x.new_zeros(()), None


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V)
    aux_loss: torch.Tensor  # sum over MoE blocks of load-balancing + z losses
    tokens_per_expert: torch.Tensor | None  # (moe blocks, E) assignments, None without MoE


class LongContextLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            nn.init.normal_(block.attn.out.weight, std=0.02 / math.sqrt(2 * cfg.layers))
            if isinstance(block.ffn, MoE):  # the experts and router keep Switch's init (§2.4)
                block.ffn.reset_parameters()

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        caches: list[KVCache] | None = None,
        group=None,
    ) -> LMOutput:
        """ids (B, T) at absolute positions start … start + T − 1. `caches` (one per block):
        append to them and attend to everything cached (streaming). `group`: this rank's chunk
        of a sequence split over the group's ranks (ring attention); `start` is then the
        chunk's offset."""
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = self.embed(ids)
        aux = x.new_zeros(())
        counts = []
        for i, block in enumerate(self.blocks):
            x, block_aux, block_counts = block(
                x, positions, None if caches is None else caches[i], group
            )
            aux = aux + block_aux
            if block_counts is not None:
                counts.append(block_counts)
        logits = self.head(self.norm(x))
        return LMOutput(logits, aux, torch.stack(counts) if counts else None)

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        p = self.head.weight
        return [
            KVCache.allocate(
                batch, self.cfg.kv_heads, max_len, self.cfg.head_dim, dtype=p.dtype, device=p.device
            )
            for _ in self.blocks
        ]

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, and active ones per token (top_k of num_experts experts)."""
        total = sum(p.numel() for p in self.parameters())
        inactive = 0
        for block in self.blocks:
            if isinstance(block.ffn, MoE):
                expert = sum(w.numel() for w in (block.ffn.w1, block.ffn.w2, block.ffn.w3))
                inactive += expert * (self.cfg.num_experts - self.cfg.top_k) // self.cfg.num_experts
        return {"total": total, "active": total - inactive}

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward, nanoGPT / PaLM appendix B):
        6 · active non-embedding parameters + 12 · layers · dim · seq_len / 2 (causal)."""
        active = self.parameter_counts()["active"] - self.embed.weight.numel()
        return 6 * active + 6 * self.cfg.layers * self.cfg.dim * seq_len

    def config_dict(self) -> dict:
        return asdict(self.cfg)
