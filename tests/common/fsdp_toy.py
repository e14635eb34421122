"""A tiny decoder-only transformer and a resumable FSDP training script for the FSDP tests.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.common.fsdp_toy \
        <run_dir> --steps 8 --checkpoint-every 2

Each rank draws its half of every batch from its own global RNG (seeded with seed + rank), so an
exact resume needs every rank's RNG state back, as well as the model, AdamW and scheduler states.
Rerunning the same command continues from the latest complete sharded checkpoint.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.distributed import cleanup, init_distributed
from common.fsdp import parallelize
from common.seeding import seed_everything
from common.sharded_checkpoint import (
    latest_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)

VOCAB, DIM, HEADS, CONTEXT = 32, 16, 2, 8


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time_, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, time_, 3, self.heads, -1).unbind(2)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, time_, dim))
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = DIM, heads: int = HEADS, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build(seed: int = 0) -> TinyDecoder:
    """The same initial weights for every caller with the same seed."""
    torch.manual_seed(seed)
    return TinyDecoder()


def make_optimizer(
    model: nn.Module,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay and a 4-step linear warm-up."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
    return optimizer, scheduler


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over the rows and positions given."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def train_step(model: nn.Module, optimizer, scheduler, tokens: torch.Tensor) -> torch.Tensor:
    loss = lm_loss(model, tokens)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4, help="sequences per rank and step")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds after every step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    info = init_distributed(torch.device("cpu"))
    model = build(args.seed)
    parallelize(
        model, model.blocks, "fsdp", info, device=torch.device("cpu"), activation_checkpointing=True
    )
    optimizer, scheduler = make_optimizer(model)
    seed_everything(args.seed + info.rank)
    (args.run_dir / "pids").mkdir(parents=True, exist_ok=True)
    (args.run_dir / "pids" / f"rank_{info.rank}").write_text(str(os.getpid()))

    start, latest = 0, latest_sharded_checkpoint(args.run_dir)
    objects = {
        "models": {"lm": model},
        "optimizers": {"lm": optimizer},
        "schedulers": {"lm": scheduler},
    }
    if latest is not None:
        start, _ = load_sharded_checkpoint(latest, **objects)
        if info.is_main:
            print(f"resumed from {latest} at step {start}", flush=True)
    for step in range(start, args.steps):
        train_step(model, optimizer, scheduler, torch.randint(VOCAB, (args.rows, CONTEXT + 1)))
        done = step + 1
        if done % args.checkpoint_every == 0 or done == args.steps:
            save_sharded_checkpoint(args.run_dir, done, **objects, keep_last=2)
        time.sleep(args.sleep)
    cleanup()


if __name__ == "__main__":
    main()
