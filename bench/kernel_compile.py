"""Compile the Triton kernels ahead of time for GPUs that are not here, and report the shared
memory Triton allocates (no GPU needed: `triton.compile` with a `GPUTarget`, PTX through the
ptxas that ships with Triton).

    python -m bench.kernel_compile

Two tables: the attention forward and dK/dV kernels with the launch table's config for each
device (Triton's shared memory against `shared_memory_bytes`' estimate and the device limit),
and the scan's three kernels (aggregate / apply / single pass, and the carry kernel) per dtype.
A kernel that compiles here has no interpreter-only construct; speed still needs a GPU.
"""

from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import common.kernels.attention.triton as attention
import common.kernels.scan.triton as scan

TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
FORWARD_ARGS = (
    "stride_qb stride_qh stride_kb stride_kh stride_lb stride_lh seq_len_fixed num_heads "
    "group scale window"
).split()
DKDV_ARGS = (
    "stride_qb stride_qh stride_kb stride_kh stride_lb stride_lh seq_len_fixed kv_heads "
    "group scale window"
).split()


def compiled_shared_bytes(fn, signature: dict, constexprs: dict, arch: int, **options) -> int:
    """Shared memory of `fn` compiled for sm_<arch> (e.g. 90, 86, 80)."""
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    return compiled.metadata.shared


def attention_shared_bytes(
    arch: int, dtype: torch.dtype, head_dim: int, backward: bool, config: dict
) -> int:
    """Triton's shared memory for the attention forward (or dK/dV) kernel under `config`."""
    t = TRITON_TYPES[dtype]
    if backward:
        pointers = {"Q": t, "K": t, "V": t, "DO": t, "LSE": "fp32", "DELTA": "fp32"}
        pointers |= {"DK": t, "DV": t, "CU": "i32"}
        fn, scalars = attention._dkdv_kernel, DKDV_ARGS
    else:
        pointers = {"Q": t, "K": t, "V": t, "Out": t, "LSE": "fp32", "CU": "i32"}
        fn, scalars = attention._forward_kernel, FORWARD_ARGS
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": config["BLOCK_M"]}
    constexprs |= {"BLOCK_N": config["BLOCK_N"], "CAUSAL": True, "WINDOWED": False}
    constexprs |= {"VARLEN": False, "PRECISION": attention.fp32_dot_precision(dtype) or "ieee"}
    if backward:
        constexprs["SPLIT_GROUP"] = False
    signature = {name: f"*{kind}" for name, kind in pointers.items()}
    signature |= {name: "fp32" if name == "scale" else "i32" for name in scalars}
    signature |= {name: "constexpr" for name in constexprs}
    options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    return compiled_shared_bytes(fn, signature, constexprs, arch, **options)


def scan_shared_bytes(arch: int, dtype: str, complex_: bool, aggregate: bool, carry: bool):
    """(forward, backward) shared memory of the scan kernels in one phase (see scan.triton)."""
    acc = "fp64" if dtype == "fp64" else "fp32"
    constexprs = {"HAS_RESET": True, "HAS_H0": True, "AGGREGATE": aggregate, "HAS_CARRY": carry}
    constexprs |= {"COMPLEX": complex_, "ACC": tl.float64 if acc == "fp64" else tl.float32}
    constexprs |= {"BLOCK_T": scan.MAX_BLOCK_T, "BLOCK_N": scan.MAX_BLOCK_N}
    ints = {"T": "i32", "N": "i32", "SEG_LEN": "i32"}
    const_sig = {name: "constexpr" for name in constexprs}
    forward = {"a_ptr": dtype, "b_ptr": dtype, "reset_ptr": "u8", "h0_ptr": dtype}
    forward |= {"carry_ptr": acc, "h_ptr": acc, "agg_ptr": acc, "agg_r_ptr": "i32"}
    backward = {"a_ptr": dtype, "h_ptr": acc, "reset_ptr": "u8", "h0_ptr": dtype}
    backward |= {"grad_h_ptr": acc, "carry_ptr": acc, "grad_a_ptr": dtype, "grad_b_ptr": dtype}
    backward |= {"agg_ptr": acc, "agg_r_ptr": "i32"}
    return tuple(
        compiled_shared_bytes(
            fn, {k: f"*{v}" for k, v in pointers.items()} | ints | const_sig, constexprs, arch
        )
        for fn, pointers in (
            (scan._linear_scan_fwd_kernel, forward),
            (scan._linear_scan_bwd_kernel, backward),
        )
    )


def main() -> None:
    print(f"triton {triton.__version__}, torch {torch.__version__}; shared memory in KiB\n")
    columns = "device | kernel | dtype | D | config (M × N, stages, warps) | estimate | Triton's"
    print(f"| {columns} | limit |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in (90, 86, 80):
        limit = attention.shared_memory_limit(capability=(arch // 10, arch % 10))
        for dtype in (torch.float16, torch.float32):
            for head_dim in (64, 128):
                for backward in (False, True):
                    config = attention.launch_config(head_dim, dtype, backward, limit)
                    tiles = (config["BLOCK_M"], config["BLOCK_N"], config["num_stages"])
                    estimate = attention.shared_memory_bytes(*tiles, head_dim, dtype, backward)
                    used = attention_shared_bytes(arch, dtype, head_dim, backward, config)
                    print(
                        f"| sm_{arch} | {'dK/dV' if backward else 'forward'} | "
                        f"{TRITON_TYPES[dtype]} | {head_dim} | {tiles[0]} × {tiles[1]}, "
                        f"{tiles[2]}, {config['num_warps']} | {estimate / 1024:.0f} | "
                        f"{used / 1024:.0f} | {limit / 1024:.0f} |",
                        flush=True,
                    )
    print("\n| device | dtype | phase | forward | backward |\n|---|---|---|---|---|")
    for arch in (90, 86):
        for dtype, complex_ in (("fp32", True), ("fp16", False), ("bf16", False), ("fp64", True)):
            name = {"fp32": "complex64", "fp64": "complex128"}.get(dtype, dtype)
            for phase, aggregate, carry in (
                ("aggregate", True, False),
                ("apply", False, True),
                ("single pass", False, False),
            ):
                fwd, bwd = scan_shared_bytes(arch, dtype, complex_, aggregate, carry)
                print(f"| sm_{arch} | {name} | {phase} | {fwd / 1024:.0f} | {bwd / 1024:.0f} |")


if __name__ == "__main__":
    main()
