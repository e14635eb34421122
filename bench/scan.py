"""Speed of the resettable linear scan (S5 / resettable S5) against the sequential loop.

    python -m bench.scan [--batch 4] [--channels 64] [--max-steps 16384] [--repeats 3] [--threads 1]

Rows: the sequential reference loop (the baseline, ratio 1.00), the chunked torch scan
(2·sqrt(T) sequential steps) and, on CUDA, the Triton kernel. Elements/s counts B·T·N states
per second, forward alone and forward + backward. Complex64 elements with 1% resets, as in an
S5 layer over a batch of rollouts. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

from bench.timing import best_seconds
from common.device import peak_memory_bytes, reset_peak_memory, resolve_device
from common.kernels.scan import linear_scan, linear_scan_chunked, linear_scan_reference

Scan = Callable[..., tuple[torch.Tensor, torch.Tensor]]
STEPS = (128, 512, 2048, 8192, 16384)


def time_scan(
    scan: Scan, inputs: tuple[torch.Tensor, ...], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Best seconds of the forward pass alone and of forward + backward."""
    a, b, reset, h0 = inputs

    def forward() -> None:
        with torch.no_grad():
            scan(a, b, reset, h0)

    def forward_backward() -> None:
        leaves = [x.detach().requires_grad_() for x in (a, b, h0)]
        h, h_last = scan(leaves[0], leaves[1], reset, leaves[2])
        (h.real.sum() + h_last.imag.sum()).backward()

    fwd, fwd_bwd = best_seconds([forward, forward_backward], device, repeats)
    return fwd, fwd_bwd


def make_inputs(batch: int, steps: int, channels: int, device: torch.device):
    shape = (batch, steps, channels)
    a = torch.polar(0.5 + 0.49 * torch.rand(shape), 2 * math.pi * torch.rand(shape))
    b = torch.randn(shape, dtype=torch.complex64)
    reset = torch.rand(batch, steps) < 0.01
    h0 = torch.randn(batch, channels, dtype=torch.complex64)
    return tuple(x.to(device) for x in (a, b, reset, h0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=STEPS[-1], help="largest T to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths: dict[str, Scan] = {
        "sequential loop (reference)": linear_scan_reference,
        "chunked torch": linear_scan_chunked,
    }
    if device.type == "cuda":
        paths["triton"] = lambda a, b, r, h0: linear_scan(a, b, reset=r, h0=h0, backend="triton")
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device={hardware}  threads={torch.get_num_threads()}  torch={torch.__version__}  "
        f"B={args.batch}  N={args.channels}  dtype=complex64  resets=1%\n"
    )
    print(
        "| T | path | fwd elements/s | fwd ratio | fwd+bwd elements/s | fwd+bwd ratio | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for steps in (t for t in STEPS if t <= args.max_steps):
        a, b, reset, h0 = make_inputs(args.batch, steps, args.channels, device)
        elements = args.batch * steps * args.channels
        baseline: dict[str, float] = {}
        for name, scan in paths.items():
            reset_peak_memory(device)
            seconds = time_scan(scan, (a, b, reset, h0), device, args.repeats)
            rates = [elements / s for s in seconds]
            baseline = baseline or dict(zip(("fwd", "bwd"), rates, strict=True))
            peak = peak_memory_bytes(device) / 2**20
            print(
                f"| {steps} | {name} | {rates[0]:.3g} | {rates[0] / baseline['fwd']:.2f} "
                f"| {rates[1]:.3g} | {rates[1] / baseline['bwd']:.2f} | {peak:.0f} |"
            )
    if device.type == "cpu":
        print("\npeak MiB on CPU is the process's resident-set high-water mark (never reset).")


if __name__ == "__main__":
    main()
