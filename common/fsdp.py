"""FSDP2 (`fully_shard`) and activation checkpointing applied to a model from the outside.

As in torchtitan: every transformer block becomes its own FSDP unit (its parameters are
all-gathered for its forward / backward and freed after), then the root takes what is left
(embeddings, final norm, head). Parameters, gradients and AdamW states are all sharded over the
ranks (dim 0, as DTensors); the model code knows nothing of it. `parallelize` is the one call a
train loop makes for `trainer.parallel=ddp|fsdp`.

Order of application (torchtitan's): activation checkpointing, then `torch.compile` per block,
then `fully_shard`. Tried on CPU with gloo (torch 2.13.0, tests/common/test_fsdp.py): checkpointed
blocks compiled in place (`block.compile()`, inductor) under FSDP2 on 2 ranks give the eager
one-process losses to 1e-5 (a slow test: compilation takes ~20 s); not tried: compile under DDP,
compiling the whole FSDP root, CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from common.distributed import DistInfo, wrap_ddp

PARALLEL = ("ddp", "fsdp")


def mixed_precision_policy(device: torch.device, enabled: bool) -> MixedPrecisionPolicy:
    """bf16 parameters for compute and all-gathers, fp32 gradient reductions, on CUDA when
    `enabled`; fp32 throughout otherwise (CPU). The sharded parameters the optimiser updates stay
    in their own dtype (fp32 master weights) either way."""
    if enabled and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_activation_checkpointing(blocks: nn.ModuleList) -> nn.ModuleList:
    """Replace every block of `blocks` in place by a non-reentrant `checkpoint_wrapper` of it:
    its activations are recomputed in the backward instead of stored. State-dict names are
    unchanged (the wrapper strips its `_checkpoint_wrapped_module.` prefix, and so does
    `get_state_dict`), so checkpoints load into plain models."""
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"blocks must be an nn.ModuleList to be wrapped in place, not {blocks!r}")
    for index, block in enumerate(blocks):
        blocks[index] = checkpoint_wrapper(block)
    return blocks


def apply_fsdp(
    model: nn.Module,
    blocks: Iterable[nn.Module],
    *,
    mixed_precision: bool,
    device: torch.device,
) -> nn.Module:
    """Shard `model` over all ranks of the default process group: each of `blocks` (the
    transformer blocks, in forward order) is one FSDP unit, then the root.

    The last block keeps its parameters gathered after the forward, since the backward needs
    them first (torchtitan does the same). Needs a process group (a 1-process one works).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("apply_fsdp needs a process group (common.distributed.init_distributed)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision_policy(device, mixed_precision)
    blocks = list(blocks)
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=not last)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def parallelize(
    model: nn.Module,
    blocks: nn.ModuleList,
    parallel: str,
    info: DistInfo,
    *,
    device: torch.device,
    mixed_precision: bool = False,
    activation_checkpointing: bool = False,
    compile_blocks: bool = False,
) -> nn.Module:
    """Apply `trainer.parallel` to `model` (already on `device`), whose transformer blocks are
    `blocks`: `ddp` (DistributedDataParallel, a no-op in one process) or `fsdp` (FSDP2, see
    `apply_fsdp`; without a process group there is nothing to shard over and the model is
    returned unsharded). Optionally checkpoints and compiles each block first.

    `mixed_precision` only acts under FSDP (its bf16 policy); with DDP use `common.device.autocast`.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"trainer.parallel={parallel!r} is not allowed; use one of {PARALLEL}")
    if activation_checkpointing:
        apply_activation_checkpointing(blocks)
    if compile_blocks:
        for block in blocks:
            block.compile()
    if parallel == "ddp":
        return wrap_ddp(model, info)
    if dist.is_available() and dist.is_initialized():
        return apply_fsdp(model, blocks, mixed_precision=mixed_precision, device=device)
    return model
