"""Sharded, resumable checkpoints through torch.distributed.checkpoint (DCP): every rank writes
its own shards of the model, optimiser and RNG states.

A checkpoint is the directory `<run_dir>/checkpoints/step_XXXXXXXX/` holding DCP's files
(`.metadata`, one `__<rank>_0.distcp` per rank) and a `COMPLETE` marker. A save writes
`step_XXXXXXXX.tmp/` (all ranks), waits for every rank, then rank 0 writes the marker and renames
the directory into place: a save killed midway leaves a `.tmp` directory that resume never
picks, and only a directory with the marker counts. All ranks must see the same filesystem.

Stored: model and optimiser states as `torch.distributed.checkpoint.state_dict.get_state_dict`
gives them (FSDP shards, or full tensors written once for a plain or DDP model; names are the
unwrapped model's, so a checkpoint can be loaded at another world size or unsharded, see
`common.convert_checkpoint`), scheduler states, the step, each rank's RNG states and rank 0's
`extra`. Works without a process group (one process) too. DCP reads the non-tensor entries
with pickle: load only checkpoints you trust.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from common.checkpoint import capture_rng_state, checkpoint_dir, restore_rng_state
from common.distributed import barrier

MARKER = "COMPLETE"
_NAME = re.compile(r"^step_(\d{8})$")
_GARBAGE = re.compile(r"^step_\d{8}\.(tmp|old)$")


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_key(rank: int) -> str:
    return f"rank_{rank:05d}"


def list_sharded_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete sharded checkpoints of a run, oldest first (a `.tmp` directory or one without
    the marker is ignored)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_sharded_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_sharded_checkpoints(run_dir)
    return found[-1] if found else None


def _check_pairs(models: dict[str, torch.nn.Module], optimizers: dict[str, Any]) -> None:
    unpaired = sorted(set(optimizers) - set(models))
    if unpaired:
        raise ValueError(
            f"optimizers {unpaired} name no model: optimizers[name] must optimise models[name] "
            f"(models: {sorted(models)})"
        )


def _state(
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    step: int,
    world_size: int,
) -> dict[str, Any]:
    """The DCP state dict of these objects (also the template a load fills in place)."""
    state: dict[str, Any] = {
        "step": step,
        "world_size": world_size,
        "models": {},
        "optimizers": {},
        "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
    }
    for name, model in models.items():
        if name in optimizers:
            state["models"][name], state["optimizers"][name] = get_state_dict(
                model, optimizers[name]
            )
        else:
            state["models"][name] = get_model_state_dict(model)
    return state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint directory: renamed out of the complete set first, so a deletion cut
    short never leaves a partial directory that looks complete."""
    doomed = path.with_name(f"{path.name}.old")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def save_sharded_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Collectively write the checkpoint of `step` (every rank calls this) and delete all but the
    newest `keep_last`. `optimizers[name]` must optimise `models[name]`; `extra` (plain types and
    tensors) is taken from rank 0."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last} must be >= 1")
    optimizers, schedulers = optimizers or {}, schedulers or {}
    _check_pairs(models, optimizers)
    rank, world_size = _rank_and_world()
    directory = checkpoint_dir(run_dir)
    final = directory / f"step_{step:08d}"
    tmp = final.with_name(f"{final.name}.tmp")
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
    barrier()

    state = _state(models, optimizers, schedulers, step, world_size)
    state["rng"] = {_rng_key(rank): capture_rng_state()}
    if rank == 0:
        buffer = io.BytesIO()
        torch.save(extra or {}, buffer)
        state["extra"] = buffer.getvalue()
    dcp.save(state, checkpoint_id=tmp)
    barrier()

    if rank == 0:
        with open(tmp / MARKER, "w") as f:
            f.write(f"step {step}, world_size {world_size}\n")
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(directory)
        for old in list_sharded_checkpoints(run_dir)[:-keep_last]:
            _remove(old)
        for garbage in (p for p in directory.iterdir() if _GARBAGE.match(p.name)):
            shutil.rmtree(garbage)
    barrier()
    return final


def load_sharded_checkpoint(
    path: str | os.PathLike,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    restore_rng: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Collectively load a checkpoint into the given objects (sharded or not, any world size);
    returns (step, extra). This rank's RNG states are restored when `restore_rng`, which needs
    the world size the checkpoint was written with."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise ValueError(f"{path} is not a complete sharded checkpoint (no {MARKER} marker)")
    optimizers, schedulers = optimizers or {}, schedulers or {}
    _check_pairs(models, optimizers)
    rank, world_size = _rank_and_world()
    header = {"step": 0, "world_size": 0}
    dcp.load(header, checkpoint_id=path)
    if restore_rng and header["world_size"] != world_size:
        raise ValueError(
            f"{path} holds the RNG states of {header['world_size']} ranks, this run has "
            f"{world_size}: resume with the same world size or pass restore_rng=False"
        )

    state = _state(models, optimizers, schedulers, header["step"], header["world_size"])
    state["extra"] = b""
    if restore_rng:
        state["rng"] = {_rng_key(rank): capture_rng_state()}
    dcp.load(state, checkpoint_id=path)

    for name, model in models.items():
        if name in optimizers:
            set_state_dict(
                model,
                optimizers[name],
                model_state_dict=state["models"][name],
                optim_state_dict=state["optimizers"][name],
            )
        else:
            set_model_state_dict(model, state["models"][name])
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(state["schedulers"][name])
    if restore_rng:
        restore_rng_state(state["rng"][_rng_key(rank)])
    extra = torch.load(io.BytesIO(state["extra"]), weights_only=True)
    return header["step"], extra
