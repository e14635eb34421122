"""Kernels shared by the papers, each with a plain-PyTorch reference next to it.

attention/  flash attention (Triton), reference, KV cache, ring attention
moe/        mixture-of-experts layer with a grouped-GEMM path
scan/       linear recurrence h_t = a_t * h_{t-1} + b_t with resets (S5)

Every public op takes `backend="auto" | "triton" | "reference"` (see `resolve_backend`).
"""
