"""Run a project entry point as a user does: `python -m <module> <overrides>` from the repo root."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_module(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m *args` in a subprocess; with `check`, a failure shows its stdout and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def train_one_process_and_fsdp(
    module: str, overrides: list[str], single: Path, sharded: Path, step: int
) -> tuple[dict, dict]:
    """Train `module` in one process into `single` and under torchrun on two FSDP2 ranks
    (`trainer.parallel=fsdp`) into `sharded`, convert the sharded checkpoint of `step` with
    `common.convert_checkpoint` (next to the shards, where eval finds it), and return both
    checkpoints: (one process, converted)."""
    run_module(module, *overrides, f"hydra.run.dir={single}")
    run_module(
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        module,
        *overrides,
        "trainer.parallel=fsdp",
        f"hydra.run.dir={sharded}",
    )
    name = f"step_{step:08d}"
    shards = sharded / "checkpoints" / name
    assert (shards / ".metadata").exists()
    converted = sharded / "checkpoints" / f"{name}.pt"
    run_module("common.convert_checkpoint", str(shards), str(converted))
    one = torch.load(single / "checkpoints" / f"{name}.pt", weights_only=True)
    return one, torch.load(converted, weights_only=True)
