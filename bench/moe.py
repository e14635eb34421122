"""Speed of the dropless MoE layer against the loop-over-experts reference and a dense SwiGLU MLP.

    python -m bench.moe [--tokens 4096] [--dim 128] [--hidden 256] [--top-k 2] [--repeats 3]
                        [--threads 1] [--device auto]

Rows, for 8 to 64 experts, forward + backward tokens/s:
- dense SwiGLU with hidden·top_k units: the same active parameters and FLOPs per token
  (no router): the baseline, ratio 1.00;
- loop reference: router + `moe_reference` (a token mask per expert, no sorting);
- MoE layer, dropless, backend="reference": sort by expert + one GEMM per expert per weight
  (what `backend="auto"` runs on CPU);
- on CUDA, MoE layer, dropless, backend="triton": sort + Triton grouped GEMMs.
A second table times one grouped GEMM forward: the per-expert loop, `torch._grouped_mm` (present
in this torch build; fp32 on CPU) and, on CUDA, the Triton kernel. Timings are reported, never
asserted.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.timing import best_seconds
from common.device import peak_memory_bytes, reset_peak_memory, resolve_device
from common.kernels.moe import MoE, grouped_mm, grouped_mm_reference, moe_reference

EXPERTS = (8, 16, 32, 64)


class DenseSwiGLU(nn.Module):
    """(silu(x W1) ⊙ x W3) W2 with one set of weights for every token."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def loop_reference(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """The same layer computed by `moe_reference`: top-k of the softmax, renormalised."""
    tokens = x.reshape(-1, layer.dim)
    top, ids = (tokens @ layer.router.weight.T).softmax(-1).topk(layer.config.top_k, dim=-1)
    gates = top / top.sum(-1, keepdim=True)
    return moe_reference(tokens, ids, gates, layer.w1, layer.w3, layer.w2)


def forward_backward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    model(x.detach().requires_grad_()).sum().backward()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256, help="hidden units per expert")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (0: torch's default). 1 by default: on a shared 2-core host OpenMP "
        "synchronisation dominates these small per-expert GEMMs",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device={hardware}  threads={torch.get_num_threads()}  torch={torch.__version__}  "
        f"tokens={args.tokens}  dim={args.dim}  hidden/expert={args.hidden}  top_k={args.top_k}  "
        f"dtype={str(dtype).removeprefix('torch.')}  forward+backward\n"
    )
    print("| experts | path | tokens/s | ratio vs dense | peak MiB |")
    print("|---|---|---|---|---|")
    x = torch.randn(1, args.tokens, args.dim, device=device, dtype=dtype)
    dense = DenseSwiGLU(args.dim, args.hidden * args.top_k).to(device, dtype)
    for experts in EXPERTS:
        layers = {
            backend: MoE(args.dim, args.hidden, experts, args.top_k, backend=backend).to(
                device, dtype
            )
            for backend in ("reference", "triton")
            if backend == "reference" or device.type == "cuda"
        }
        paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            f"dense SwiGLU, hidden {args.hidden * args.top_k}": dense,
            "loop reference (mask per expert)": lambda x, m=layers["reference"]: loop_reference(
                m, x
            ),
        }
        for backend, layer in layers.items():
            paths[f"MoE dropless, backend={backend}"] = lambda x, m=layer: m(x).output
        dense_rate = 0.0
        for name, model in paths.items():
            reset_peak_memory(device)
            step = lambda m=model: forward_backward(m, x)  # noqa: E731
            (seconds,) = best_seconds([step], device, args.repeats)
            rate = args.tokens / seconds
            dense_rate = dense_rate or rate
            peak = peak_memory_bytes(device) / 2**20
            print(f"| {experts} | {name} | {rate:,.0f} | {rate / dense_rate:.2f} | {peak:.0f} |")

    experts = EXPERTS[-1]
    counts = torch.full((experts,), args.tokens * args.top_k // experts)
    offsets = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32).to(device)
    rows = torch.randn(int(counts.sum()), args.dim, device=device, dtype=dtype)
    weight = torch.randn(experts, args.dim, args.hidden, device=device, dtype=dtype)
    gemms: dict[str, Callable[[], torch.Tensor]] = {
        "loop over experts": lambda: grouped_mm_reference(rows, weight, offsets),
        "torch._grouped_mm": lambda: torch._grouped_mm(rows, weight, offs=offsets[1:]),
    }
    if device.type == "cuda":
        gemms["triton grouped_mm"] = lambda: grouped_mm(rows, weight, offsets)
    flops = 2 * rows.shape[0] * args.dim * args.hidden
    shape = f"{experts} experts x {counts[0]} rows, K={args.dim}, N={args.hidden}"
    print(f"\nOne grouped GEMM forward: {shape}")
    print("\n| path | TFLOP/s | ratio vs loop |\n|---|---|---|")
    loop_rate = 0.0
    for name, gemm in gemms.items():
        with torch.no_grad():
            (seconds,) = best_seconds([gemm], device, args.repeats)
            rate = flops / seconds / 1e12
        loop_rate = loop_rate or rate
        print(f"| {name} | {rate:.3g} | {rate / loop_rate:.2f} |")
    if device.type == "cpu":
        print("\npeak MiB on CPU is the process's resident-set high-water mark (never reset).")


if __name__ == "__main__":
    main()
