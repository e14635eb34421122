"""Per-rank memory of parameters, gradients and AdamW states under FSDP2, on paper and measured.

    python -m bench.fsdp_memory [--params 7e9] [--layers 24] [--dim 384] [--depth 6]
                                [--vocab 8192] [--no-measure]

On paper, for 79M, 364M, 1.18B parameters (and `--params`) at world sizes 1, 2, 8, 64, with
every parameter sharded (`common.fsdp.apply_fsdp`) and bytes per parameter:
- fp32: parameter 4 + gradient 4 + AdamW exp_avg 4 + exp_avg_sq 4 = 16, all sharded;
- bf16 parameters / fp32 master (`mixed_precision_policy` on CUDA): the sharded parameter is the
  fp32 master copy (4), its gradient is reduced and kept in fp32 (4), AdamW 8: the same 16
  sharded bytes; what bf16 halves is the all-gathered block, whose unsharded parameters and
  gradients take 2 + 2 bytes per parameter instead of 4 + 4 (one block, taken as
  parameters / `--layers`; with prefetching two blocks can be gathered at once).
DDP keeps all 16 bytes per parameter on every rank. Activations are not counted.

Measured (unless `--no-measure`): a decoder (`--depth` torch TransformerEncoderLayers of width
`--dim`, an embedding and a head over `--vocab`) trained for two AdamW steps with FSDP2 in 1 and
2 gloo processes on the CPU; per rank, the bytes of its local shards of parameters, gradients
and AdamW states, and the growth of its peak resident set (RSS) from before the model was built
to after the steps, with glibc told to return freed blocks to the OS (it also holds the unsharded
model built before sharding, activations, gathered blocks and AdamW's temporaries).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from common.device import peak_memory_bytes
from common.distributed import init_distributed, spawn_local
from common.fsdp import apply_fsdp

SIZES = (79e6, 364e6, 1.18e9)
WORLDS = (1, 2, 8, 64)
SHARDED_BYTES = 4 + 4 + 4 + 4  # parameter, gradient, exp_avg, exp_avg_sq
GATHERED_BYTES = {"fp32": 4 + 4, "bf16 params / fp32 master": 2 + 2}  # unsharded param + grad


def per_rank_bytes(params: float, world: int) -> float:
    """Sharded parameter + gradient + AdamW bytes that one of `world` FSDP ranks holds."""
    return SHARDED_BYTES * params / world


def gib(n: float) -> str:
    return f"{n / 2**30:.3g}"


def paper_table(sizes: list[float], layers: int) -> str:
    head = " | ".join(f"world {w}" for w in WORLDS)
    lines = [
        f"| parameters | mode | {head} | + one gathered block | DDP, any world |",
        "|---" * (len(WORLDS) + 4) + "|",
    ]
    for params in sizes:
        for mode, gathered in GATHERED_BYTES.items():
            cells = " | ".join(gib(per_rank_bytes(params, w)) for w in WORLDS)
            block = gib(gathered * params / layers)
            lines.append(
                f"| {params / 1e6:,.0f}M | {mode} | {cells} | {block} | "
                f"{gib(SHARDED_BYTES * params)} |"
            )
    return "\n".join(lines)


class Decoder(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True)
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def measure(rank: int, world: int, vocab: int, dim: int, depth: int) -> dict[str, float]:
    """One rank of a 2-step FSDP2 run (fp32, CPU): its shard bytes and peak-RSS growth."""
    device = torch.device("cpu")
    if not init_distributed(device).enabled:
        dist.init_process_group("gloo")  # a 1-process group: FSDP2 with nothing to shard over
    before = peak_memory_bytes(device)
    torch.manual_seed(0)
    model = Decoder(vocab, dim, depth)
    params = sum(p.numel() for p in model.parameters())
    apply_fsdp(model, model.blocks, mixed_precision=False, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        tokens = torch.randint(vocab, (2, 64))
        logits = model(tokens[:, :-1])
        nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()  # the gradients are kept, as they are during the next backward
    state = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    return {
        "params": params,
        "parameters": sum(_local_bytes(p) for p in model.parameters()),
        "gradients": sum(_local_bytes(p.grad) for p in model.parameters()),
        "adamw": sum(_local_bytes(t) for t in state),
        "rss": peak_memory_bytes(device) - before,
    }


def measured_table(vocab: int, dim: int, depth: int) -> str:
    lines = [
        "| world | rank | parameters MiB | gradients MiB | AdamW MiB | sum MiB | on paper MiB "
        "| peak RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # glibc: allocations above 64 KiB get their own mappings and go back to the OS when freed,
    # so that the resident set follows the live tensors (read by the spawned processes).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    for world in (1, 2):
        for rank, m in enumerate(spawn_local(measure, world, vocab, dim, depth)):
            total = m["parameters"] + m["gradients"] + m["adamw"]
            mib = [f"{m[k] / 2**20:.1f}" for k in ("parameters", "gradients", "adamw")]
            paper = per_rank_bytes(m["params"], world) / 2**20
            lines.append(
                f"| {world} | {rank} | {' | '.join(mib)} | {total / 2**20:.1f} | {paper:.1f} "
                f"| {m['rss'] / 2**20:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, help="one more parameter count, e.g. 7e9")
    parser.add_argument("--layers", type=int, default=24, help="blocks, for the gathered block")
    parser.add_argument("--dim", type=int, default=384, help="width of the measured decoder")
    parser.add_argument("--depth", type=int, default=6, help="blocks of the measured decoder")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary of the measured one")
    parser.add_argument("--no-measure", action="store_true", help="print the paper table only")
    args = parser.parse_args()
    sizes = [*SIZES, *([args.params] if args.params else [])]
    print(f"Per-rank parameter + gradient + AdamW GiB under FSDP2 (layers={args.layers})\n")
    print(paper_table(sizes, args.layers))
    if not args.no_measure:
        print(f"\nMeasured: CPU, gloo, fp32, torch={torch.__version__}, dim={args.dim}, ", end="")
        print(f"depth={args.depth}, vocab={args.vocab}\n")
        print(measured_table(args.vocab, args.dim, args.depth))


if __name__ == "__main__":
    main()
