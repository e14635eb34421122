"""Attention speed: TFLOP/s of forward and forward + backward against
F.scaled_dot_product_attention on the same machine, in the same run.

    python -m bench.attention [--repeats 3] [--cpu-lengths 256 512 1024 2048 4096]

CPU: the reference path of `attention` (what model code runs on a CPU) vs SDPA, fp32,
B = 1, H = 4, D = 64. CUDA (when present): the Triton flash-attention kernel vs SDPA's flash
backend, bf16, B·T = 16K tokens, H·D = 2048, T = 1K … 16K, D = 64 / 128, causal and not, with
the peak memory of forward + backward. FLOPs (FlashAttention-2, Dao 2023, §4.1): 4·B·H·T²·D for
the forward, half of it with a causal mask, and 2.5 times the forward's for forward + backward.
Timings are the best of at least `--repeats` runs after a warm-up; nothing asserts on them.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.timing import best_seconds
from common.device import peak_memory_bytes, reset_peak_memory
from common.kernels.attention import attention

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


def flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool, backward: bool) -> float:
    forward = 4 * batch * heads * seq**2 * head_dim / (2 if causal else 1)
    return forward * (2.5 if backward else 1.0)


def measure(
    attns: list[Attention],
    shape_q: tuple[int, int, int, int],
    causal: bool,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    kv_heads: int | None = None,
) -> list[tuple[float, float, int]]:
    """Per attention: (TFLOP/s forward, TFLOP/s forward + backward, peak bytes of one forward +
    backward). `kv_heads` < the query heads: grouped-query attention (GQA)."""
    generator = torch.Generator(device=device).manual_seed(0)
    batch, heads, seq, head_dim = shape_q
    shape_kv = (batch, kv_heads or heads, seq, head_dim)
    q, grad_out = (
        torch.randn(shape_q, generator=generator, device=device, dtype=dtype) for _ in range(2)
    )
    k, v = (
        torch.randn(shape_kv, generator=generator, device=device, dtype=dtype) for _ in range(2)
    )
    for t in (q, k, v):
        t.requires_grad_()

    def forward(attn: Attention) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                attn(q, k, v, causal)

        return run

    def forward_backward(attn: Attention) -> Callable[[], None]:
        def run() -> None:
            torch.autograd.grad(attn(q, k, v, causal), (q, k, v), grad_out)

        return run

    fwd = best_seconds([forward(attn) for attn in attns], device, repeats)
    train = best_seconds([forward_backward(attn) for attn in attns], device, repeats)
    peaks = []
    for attn in attns:
        reset_peak_memory(device)
        forward_backward(attn)()
        peaks.append(peak_memory_bytes(device))
    batch, heads, seq, head_dim = shape_q
    fwd_flops = flops(batch, heads, seq, head_dim, causal, False)
    train_flops = flops(batch, heads, seq, head_dim, causal, True)
    return [
        (fwd_flops / f / 1e12, train_flops / t / 1e12, peak)
        for f, t, peak in zip(fwd, train, peaks, strict=True)
    ]


def reference_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
    return attention(q, k, v, causal=causal, backend="reference")


def triton_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
    return attention(q, k, v, causal=causal, backend="triton")


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


def cpu_name() -> str:
    """The processor's model name where Linux reports it."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_table(lengths: list[int], repeats: int) -> None:
    cpu = torch.device("cpu")
    print(
        f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; fp32, B=1, H=4, D=64; TFLOP/s\n"
    )
    columns = ["causal", "T", "reference fwd", "SDPA fwd", "ratio"]
    columns += ["reference fwd+bwd", "SDPA fwd+bwd", "ratio"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for causal in (False, True):
        for seq in lengths:
            shape = (1, 4, seq, 64)
            ours, base = measure([reference_path, sdpa], shape, causal, torch.float32, cpu, repeats)
            print(
                f"| {causal} | {seq} | {ours[0]:.3f} | {base[0]:.3f} | {ours[0] / base[0]:.2f} "
                f"| {ours[1]:.3f} | {base[1]:.3f} | {ours[1] / base[1]:.2f} |"
            )


def cuda_table(repeats: int) -> None:
    gpu = torch.device("cuda")
    print(
        f"\nGPU: {torch.cuda.get_device_name(gpu)}, torch {torch.__version__}; bf16, "
        "B·T = 16K tokens, H·D = 2048; TFLOP/s, peak MiB of fwd+bwd\n"
    )
    columns = ["D", "causal", "T", "Triton fwd", "SDPA flash fwd", "ratio", "Triton fwd+bwd"]
    columns += ["SDPA flash fwd+bwd", "ratio", "Triton MiB", "SDPA MiB"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for head_dim in (64, 128):
        for causal in (False, True):
            for seq in (1024, 2048, 4096, 8192, 16384):
                shape = (16384 // seq, 2048 // head_dim, seq, head_dim)
                ours, base = measure(
                    [triton_path, sdpa_flash], shape, causal, torch.bfloat16, gpu, repeats
                )
                print(
                    f"| {head_dim} | {causal} | {seq} | {ours[0]:.0f} | {base[0]:.0f} "
                    f"| {ours[0] / base[0]:.2f} | {ours[1]:.0f} | {base[1]:.0f} "
                    f"| {ours[1] / base[1]:.2f} | {ours[2] / 2**20:.0f} | {base[2] / 2**20:.0f} |"
                )


def gqa_table(repeats: int) -> None:
    """GQA (16 query heads over 2 kv heads, D = 128, causal), where the dK/dV pass runs per
    query head when kv heads alone under-fill the GPU."""
    gpu = torch.device("cuda")
    print("\nGQA 16/2, D = 128, causal, bf16, B·T = 16K tokens; TFLOP/s\n")
    columns = ["T", "Triton fwd", "SDPA flash fwd", "ratio", "Triton fwd+bwd"]
    columns += ["SDPA flash fwd+bwd"]
    print("| " + " | ".join(columns + ["ratio"]) + " |\n" + "|---" * (len(columns) + 1) + "|")
    for seq in (1024, 4096, 16384):
        shape = (16384 // seq, 16, seq, 128)
        ours, base = measure(
            [triton_path, sdpa_flash], shape, True, torch.bfloat16, gpu, repeats, kv_heads=2
        )
        print(
            f"| {seq} | {ours[0]:.0f} | {base[0]:.0f} | {ours[0] / base[0]:.2f} "
            f"| {ours[1]:.0f} | {base[1]:.0f} | {ours[1] / base[1]:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    args = parser.parse_args()
    cpu_table(args.cpu_lengths, args.repeats)
    if torch.cuda.is_available():
        cuda_table(args.repeats)
        gqa_table(args.repeats)
    else:
        print("\nGPU: not measured (no CUDA device in this run)")


if __name__ == "__main__":
    main()
