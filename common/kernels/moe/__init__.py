"""Mixture-of-experts layer with a Triton grouped-GEMM dropless path; see README.md.

`MoE` (routing, capacity dropping, dropless grouped GEMM, auxiliary losses), `ExpertParallelMoE`
(experts sharded over a process group, all-to-all dispatch/combine), the grouped GEMM op
`grouped_mm` and the loop-over-experts references.
"""

from common.kernels.moe.expert_parallel import ExpertParallelMoE, all_to_all
from common.kernels.moe.layer import MoE, MoEOutput, RouterConfig, Routing, route
from common.kernels.moe.reference import grouped_mm_reference, moe_reference
from common.kernels.moe.triton import grouped_mm, grouped_mm_weight_grad

__all__ = [
    "ExpertParallelMoE",
    "MoE",
    "MoEOutput",
    "RouterConfig",
    "Routing",
    "all_to_all",
    "grouped_mm",
    "grouped_mm_reference",
    "grouped_mm_weight_grad",
    "moe_reference",
    "route",
]
