"""Atomic, resumable checkpoints: model, optimiser, scheduler, step and RNG states.

Files are `<run_dir>/checkpoints/step_XXXXXXXX.pt`, written to a temporary file and renamed
into place, so a crash mid-write never leaves a truncated checkpoint that resume would pick.
Everything stored is a tensor or a plain Python container, so loading uses `weights_only=True`.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and every CUDA device) as safe types."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files are ignored)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _state_dicts(objects: dict[str, Any] | None) -> dict[str, Any]:
    return {name: obj.state_dict() for name, obj in (objects or {}).items()}


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Atomically write a checkpoint for `step` and delete all but the newest `keep_last`."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last} must be >= 1")
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": step,
        "models": _state_dicts(models),
        "optimizers": _state_dicts(optimizers),
        "schedulers": _state_dicts(schedulers),
        "rng": capture_rng_state(),
        "extra": extra or {},
    }
    path = directory / f"step_{step:08d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink()
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> tuple[int, dict[str, Any]]:
    """Load states into the given objects; returns (step, extra)."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    for group, objects in (
        ("models", models),
        ("optimizers", optimizers),
        ("schedulers", schedulers),
    ):
        for name, obj in (objects or {}).items():
            if name not in payload[group]:
                raise KeyError(f"checkpoint {path} has no {group[:-1]} named {name!r}")
            obj.load_state_dict(payload[group][name])
    if restore_rng:
        restore_rng_state(payload["rng"])
    return payload["step"], payload["extra"]
