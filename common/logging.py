"""Run logging: console and JSONL always; TensorBoard and wandb when asked for.

Every record carries `step` and `wall_time` (seconds since the logger started). The config is
written once, as the first JSONL record. wandb defaults to `mode="disabled"` so nothing ever
asks for a login; use `mode="offline"` to keep a local wandb run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

WANDB_MODES = ("disabled", "offline", "online")

log = logging.getLogger("seqcontrol")


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a metric (tensors and numpy scalars become floats)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


class RunLogger:
    """Writes metrics of one run. Only the main process should log (`enabled=False` elsewhere)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict[str, Any] | None = None,
        enabled: bool = True,
        console_every: int = 1,
        tensorboard: bool = False,
        wandb_mode: str = "disabled",
        wandb_project: str = "seqcontrol",
        run_name: str | None = None,
    ) -> None:
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"logging.wandb_mode={wandb_mode!r}; allowed: {WANDB_MODES}")
        self.enabled = enabled
        self.console_every = console_every
        self.run_dir = Path(run_dir)
        self._start = time.time()
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs `pip install tensorboard`

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if wandb_mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=wandb_project,
                name=run_name,
                dir=str(self.run_dir),
                mode=wandb_mode,
                config=config,
            )
        if config is not None:
            self._write({"type": "config", "config": config})

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def log(self, step: int, metrics: dict[str, Any], *, console: bool | None = None) -> None:
        if not self.enabled:
            return
        plain = {k: _plain(v) for k, v in metrics.items()}
        wall = time.time() - self._start
        self._write({"type": "metrics", "step": step, "wall_time": round(wall, 3), **plain})
        if self._tb is not None:
            for key, value in plain.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(plain, step=step)
        if console if console is not None else step % self.console_every == 0:
            shown = "  ".join(f"{k}={_fmt(v)}" for k, v in plain.items())
            log.info("step %d  %s  (%.1fs)", step, shown, wall)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The metric records of a `metrics.jsonl` file, in order."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("type") == "metrics"]


def open_run(
    run_dir: str | Path,
    cfg: DictConfig,
    *,
    project: str,
    step: int,
    resumed_from: str | Path | None = None,
    enabled: bool = True,
) -> RunLogger:
    """Start (or resume) a run's logging from its Hydra config: write the resolved config to
    `run_dir/config.yaml` (what eval reads), open a `RunLogger` set by `cfg.logging`
    (console_every, tensorboard, wandb_mode), log the config at a fresh start and the
    checkpoint at a resume. `enabled=False` (ranks other than 0) writes nothing."""
    run_dir = Path(run_dir)
    if enabled:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    logger = RunLogger(
        run_dir,
        config=OmegaConf.to_container(cfg, resolve=True) if resumed_from is None else None,
        enabled=enabled,
        console_every=cfg.logging.console_every,
        tensorboard=cfg.logging.tensorboard,
        wandb_mode=cfg.logging.wandb_mode,
        wandb_project=project,
        run_name=run_dir.name,
    )
    if resumed_from is not None:
        logger.log(step, {"resumed_from": str(resumed_from)}, console=True)
    return logger


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under `root` (itself included) started by `open_run`: a config.yaml
    next to a metrics.jsonl. What every paper's eval reads."""
    return sorted(
        p.parent for p in Path(root).rglob("metrics.jsonl") if (p.parent / "config.yaml").exists()
    )
