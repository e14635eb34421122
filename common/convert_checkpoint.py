"""Convert a sharded checkpoint into one file that `common.checkpoint.load_checkpoint` loads
into unsharded models on one process (for evaluation):

    python -m common.convert_checkpoint <run_dir>/checkpoints/step_XXXXXXXX <out.pt> [--models-only]

The shards are gathered into full tensors with `torch.distributed.checkpoint.format_utils.
dcp_to_torch_save` (no process group; it needs the whole checkpoint in memory, and the disk
space of one more copy for a moment) and rearranged into load_checkpoint's layout: models,
optimisers (keyed by parameter name, which `Optimizer.load_state_dict` accepts for an optimiser
built over the same parameters in the same order), schedulers, step, rank 0's RNG states and
extra. The output holds only tensors and plain types (`weights_only=True` loads it).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from common.sharded_checkpoint import MARKER


def convert_checkpoint(
    sharded_dir: str | os.PathLike, out: str | os.PathLike, *, models_only: bool = False
) -> Path:
    """Write `out` (atomically) from the complete sharded checkpoint `sharded_dir`."""
    sharded_dir, out = Path(sharded_dir), Path(out)
    if not (sharded_dir / MARKER).is_file():
        raise ValueError(f"{sharded_dir} is not a complete sharded checkpoint (no {MARKER})")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, gathered = tempfile.mkstemp(dir=out.parent, prefix=".tmp_", suffix=".pt")
    os.close(fd)
    try:
        dcp_to_torch_save(sharded_dir, gathered)
        state = torch.load(gathered, weights_only=True)
        payload = {
            "step": state["step"],
            "models": state["models"],
            "optimizers": {} if models_only else state.get("optimizers", {}),
            "schedulers": {} if models_only else state.get("schedulers", {}),
            "rng": state["rng"][min(state["rng"])],  # rank 0's
            "extra": torch.load(io.BytesIO(state["extra"]), weights_only=True),
        }
        torch.save(payload, gathered)
        os.replace(gathered, out)
    finally:
        if os.path.exists(gathered):
            os.unlink(gathered)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sharded_dir", type=Path, help="a step_XXXXXXXX/ checkpoint directory")
    parser.add_argument("out", type=Path, help="the single-file checkpoint to write (.pt)")
    parser.add_argument(
        "--models-only", action="store_true", help="leave out optimiser and scheduler states"
    )
    args = parser.parse_args(argv)
    path = convert_checkpoint(args.sharded_dir, args.out, models_only=args.models_only)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
