"""Every kernel benchmark on one GPU, written as one markdown file named by the GPU.

    python -m bench.gpu_report [--out bench/results] [--repeats 3]      (make bench-gpu)

Runs, on the CUDA device: attention forward and forward + backward, Triton vs SDPA's flash
backend, D = 64 / 128, T = 1K … 16K, causal and not, and GQA 16/2 (`bench.attention`); the MoE
layer dropless (Triton grouped GEMMs) vs the loop over experts and vs a dense SwiGLU of equal
active parameters, 8 … 64 experts (`bench.moe`); the resettable scan, Triton (segment-parallel)
vs the sequential loop and the chunked torch scan, T = 128 … 16K, at RL batch sizes
(`bench.scan`). The file, `<out>/gpu-<device name>.md`, is ready to paste into the kernels'
READMEs. Without CUDA it says so and exits 0: nothing is measured on a CPU here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import torch

from bench import attention, moe, scan


def sections(repeats: int) -> list[tuple[str, Callable[[], None]]]:
    """(title, function printing its markdown tables) for every kernel benchmark."""
    scan_rows = [
        (f"Scan, B = {batch}, N = {channels}", ["--batch", str(batch), "--channels", str(channels)])
        for batch, channels in ((4, 64), (8, 64), (32, 64), (16, 256))
    ]
    return [
        ("Attention", lambda: attention.cuda_table(repeats)),
        ("Attention, GQA", lambda: attention.gqa_table(repeats)),
        ("MoE", lambda: moe.main(["--device", "cuda", "--repeats", str(repeats)])),
        *(
            (title, lambda a=args: scan.main([*a, "--device", "cuda", "--repeats", str(repeats)]))
            for title, args in scan_rows
        ),
    ]


def report(repeats: int) -> str:
    name = torch.cuda.get_device_name()
    capability = ".".join(map(str, torch.cuda.get_device_capability()))
    parts = [f"# Kernel benchmarks on {name} (sm {capability}), torch {torch.__version__}\n"]
    for title, run in sections(repeats):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            run()
        parts.append(f"## {title}\n\n{buffer.getvalue().strip()}\n")
        print(parts[-1], flush=True)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results", help="directory of the report")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench.gpu_report: CUDA is absent on this machine, so no kernel was measured; run "
            "it on a GPU (the READMEs' GPU tables say 'not measured' until then)."
        )
        return 0
    text = report(args.repeats)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
    path = Path(args.out) / f"gpu-{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"bench.gpu_report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
