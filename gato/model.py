"""The Gato transformer (Reed et al. 2022, §2.2, §2.3, App. C.1).

One decoder-only transformer over the token rows of `gato.data` (text, discrete and continuous
values, image patches embedded by `gato.embedding.PatchEmbedding`), trained with next-token
cross-entropy on text and action tokens only (§2.3, eq. 2). Attention is
`common.kernels.attention` (Triton flash attention on CUDA); acting decodes with a KV cache
(`new_cache`), the recompute-everything path is the speed baseline of `gato.eval`.

The blocks sit in `self.blocks` (an `nn.ModuleList`), so `common.fsdp.parallelize` shards them
from outside, per block then the root, as torchtitan does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.kernels.attention import KVCache, attention, decode_attention
from gato.embedding import PatchEmbedding, TokenEmbedding
from gato.tokenizer import Vocab

BIN_INITS = ("normal", "fourier")
FOURIER_FREQUENCY = 50.0  # std of the random frequencies: neighbouring bins within ~0.02 alike


def fourier_rows(values: torch.Tensor, dim: int, std: float) -> torch.Tensor:
    """Random Fourier features (Rahimi & Recht 2007) of scalar values (n,) → (n, dim), each
    entry of standard deviation `std`: √2 · std · cos(ω v + φ), ω ~ N(0, FOURIER_FREQUENCY²),
    φ ~ U[0, 2π), so that rows of close values are alike (kernel exp(−(ω_std Δv)² / 2))."""
    omega = torch.randn(dim) * FOURIER_FREQUENCY
    phase = torch.rand(dim) * 2 * math.pi
    return math.sqrt(2.0) * std * torch.cos(values[:, None] * omega + phase)


@dataclass
class GatoConfig:
    """Sizes of App. C.1 (Table 6) at the paper tier; `text_size` is the text vocabulary (32,000
    in the paper), `context` the sequence length (1,024), `patch_channels` the ResNet block's
    width (GroupNorm groups = min(32, patch_channels))."""

    text_size: int = 32000
    dim: int = 768
    layers: int = 8
    heads: int = 24
    mlp_dim: int = 3072
    context: int = 1024
    dropout: float = 0.0
    patch_channels: int = 32
    bin_init: str = "normal"  # "normal" | "fourier": the continuous-value rows (see `Gato`)

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.text_size)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def __post_init__(self) -> None:
        if self.bin_init not in BIN_INITS:
            raise ValueError(f"bin_init={self.bin_init!r} is not valid: one of {BIN_INITS}")
        if self.dim % self.heads:
            raise ValueError(f"heads={self.heads} is not valid: a divisor of dim={self.dim}")
        if self.head_dim not in (32, 64, 128):
            raise ValueError(
                f"dim / heads = {self.head_dim} is not valid: common.kernels.attention takes "
                "head dims 32, 64 or 128"
            )


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention and a GELU feed-forward (GPT-2; App. C.1)."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.cfg = cfg
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.dim)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = self.cfg.heads, self.cfg.head_dim
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = attention(q, k, v, causal=True)
        else:
            cache.append(k, v)
            y = decode_attention(q, cache)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, h * d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Gato(nn.Module):
    """Token rows (B, L) → next-token logits (B, L, vocab.size).

    The input embedding is `TokenEmbedding` (shared vocabulary lookup, patch embeddings in the
    image slots, local observation positions), plus a learned position over the context (our
    choice: the paper names no global position encoding)."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.cfg = cfg
        vocab = cfg.vocab
        self.embed = TokenEmbedding(vocab.size, cfg.dim)
        groups = min(32, cfg.patch_channels)
        self.patch_embed = PatchEmbedding(cfg.dim, channels=cfg.patch_channels, groups=groups)
        self.position = nn.Embedding(cfg.context, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, vocab.size, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.position.weight, std=0.02)
        self.head.weight = self.embed.token.weight  # tied input / output embedding (GPT-2)
        if cfg.bin_init == "fourier":  # ours: the paper learns the 1,024 bin rows from scratch
            bins = vocab.continuous
            values = (torch.arange(len(bins)) + 0.5) * (2.0 / len(bins)) - 1.0
            with torch.no_grad():
                self.embed.token.weight[bins.start : bins.stop] = fourier_rows(
                    values, cfg.dim, 0.02
                )
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * cfg.layers))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * cfg.layers))

    def forward(
        self,
        ids: torch.Tensor,
        local_positions: torch.Tensor,
        is_image: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
        grid: tuple[int, int] = (6, 6),
        start: int = 0,
        cache: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """ids, local_positions (B, L) at sequence positions start … start + L − 1; is_image
        (B, L) and patches (num_images, rows · cols, C, 16, 16) of the image slots in row-major
        order (`gato.data.Batch`), or neither. With `cache`, append to it and attend to all it
        holds."""
        length = ids.shape[1]
        if start + length > self.cfg.context:
            raise ValueError(
                f"positions {start}…{start + length - 1} exceed context={self.cfg.context}"
            )
        patch_embeddings = None
        if patches is not None and len(patches):
            patch_embeddings = self.patch_embed(patches, grid)
        elif is_image is not None and is_image.any():
            raise ValueError("is_image has image slots but no patches were given")
        x = self.embed(
            ids,
            local_positions,
            is_image if patch_embeddings is not None else None,
            patch_embeddings,
        )
        x = x + self.position(torch.arange(start, start + length, device=ids.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.head(self.norm(x))

    def token_losses(self, batch) -> torch.Tensor:
        """Per-token cross-entropy (B, L − 1) of token i + 1 given tokens ≤ i, zero where the
        target is not in the loss mask (§2.3: text and action tokens only)."""
        # the whole row goes in (its image slots need their patches); the last logit is unused
        logits = self(batch.ids, batch.local_positions, batch.is_image, batch.patches)[:, :-1]
        targets = batch.ids[:, 1:]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        return ce.view_as(targets) * batch.loss_mask[:, 1:]

    def loss(self, batch) -> torch.Tensor:
        """Masked mean next-token cross-entropy of a `gato.data.Batch` (eq. 2)."""
        logits = self(batch.ids, batch.local_positions, batch.is_image, batch.patches)[:, :-1]
        return self.loss_from_logits(logits, batch)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, batch) -> torch.Tensor:
        """The masked mean of eq. 2 from logits (B, L − 1, V) of a batch's first L − 1 tokens."""
        mask = batch.loss_mask[:, 1:]
        targets = batch.ids[:, 1:][mask]
        return F.cross_entropy(logits[mask].float(), targets) if len(targets) else logits.sum() * 0

    def new_cache(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        p = self.head.weight
        return [
            KVCache.allocate(
                batch,
                self.cfg.heads,
                max_len or self.cfg.context,
                self.cfg.head_dim,
                dtype=p.dtype,
                device=p.device,
            )
            for _ in self.blocks
        ]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, patch_fraction: float = 0.0) -> float:
        """Training FLOPs per token (forward + backward = 3 × forward): 6 N for the
        transformer's matrices (Kaplan et al. 2020) plus causal attention's 6 · layers · dim ·
        context (half of the full 12, nanoGPT's estimate_mfu), plus the patch ResNet block's
        convolutions for the fraction of tokens that are image patches."""
        c = self.cfg
        n = sum(p.numel() for b in self.blocks for p in b.parameters() if p.dim() == 2)
        n += self.head.weight.numel()  # the (tied) output projection is a matmul per token
        attn = 6 * c.layers * c.dim * c.context
        pe = self.patch_embed
        convs = 2 * 9 * pe.conv1.in_channels * pe.conv1.out_channels * 256
        stem = pe.stem.in_channels * pe.stem.out_channels * 256
        patch = 3 * 2 * (convs + stem + pe.proj.weight.numel())
        return 6 * n + attn + patch_fraction * patch

    def config_dict(self) -> dict:
        return asdict(self.cfg)
