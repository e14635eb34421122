"""Train Algorithm Distillation or Expert Distillation (Laskin et al. 2022, §4–5).

    python -m algo_distill.train dataset=runs/algo_distill/data/<dir> method=algorithm_distillation
    python -m algo_distill.train -m experiment=small dataset=<dir>   # AD and ED × 3 seeds

algorithm_distillation: the causal transformer predicts the source learner's actions from
windows of its learning history spanning several episodes (across-episode context), with
cross-entropy  L(θ) = −Σ_t log P_θ(a_t | h_{t−1}, o_t)  (§4, eq. 1).
expert_distillation: the same model and loss on histories of the optimal policy (the ED
baseline of §5): no learning in its data, so nothing to distil but the expert's behaviour.
Results table: algo_distill/README.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from algo_distill.collect import make_env
from algo_distill.data import HistoryWindows, load_manifest
from algo_distill.envs import SPLITS, DarkGridEnv
from algo_distill.model import build_model, configure_optimizer
from algo_distill.rollout import in_context_rollout
from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.logging import WANDB_MODES, open_run
from common.schedules import warmup_cosine
from common.seeding import seed_everything

METHODS = {"algorithm_distillation": "learning", "expert_distillation": "expert"}


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any work starts, naming the field and what is allowed."""
    check_choice(cfg, "method", "", METHODS)
    if cfg.dataset is None or not (Path(cfg.dataset) / "manifest.json").is_file():
        fail("dataset", cfg.dataset, "a directory written by algo_distill.collect")
    check_number(cfg, "context_episodes", integer=True)
    check_number(cfg, "subsample_every", integer=True)
    model = cfg.model
    for key in ("hidden", "heads", "layers", "ff"):
        check_number(model, key, "model.", integer=True)
    if model.hidden % model.heads or model.hidden // model.heads not in (32, 64, 128):
        fail(
            "model.heads",
            model.heads,
            f"a divisor of model.hidden={model.hidden} giving a head dim in (32, 64, 128)",
        )
    check_number(model, "dropout", "model.", low=None)
    if not 0.0 <= model.dropout < 1.0:
        fail("model.dropout", model.dropout, "a probability in [0, 1)")
    for key in (
        "steps",
        "batch_size",
        "eval_every",
        "eval_episodes",
        "eval_copies",
        "checkpoint_every",
    ):
        check_number(cfg.trainer, key, "trainer.", integer=True)
    check_number(cfg.trainer, "lr", "trainer.")
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)


def eval_env(manifest: dict, copies: int, split: str) -> DarkGridEnv:
    """`copies` copies of every task of a dataset's `split` ("val" or "test"), as one
    vectorised environment."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {SPLITS}")
    tasks = np.repeat(np.asarray(manifest[f"{split}_tasks"]), copies, axis=0)
    return make_env(OmegaConf.create(manifest["env"]), tasks)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train one model with `cfg.method`; returns the last quick-evaluation metrics."""
    validate(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    manifest = load_manifest(cfg.dataset)
    env = manifest["env"]
    windows = HistoryWindows.from_dataset(
        cfg.dataset,
        METHODS[cfg.method],
        cfg.context_episodes * env["episode_len"],
        env["episode_len"],
        cfg.subsample_every,
    )
    model = build_model(OmegaConf.to_container(cfg.model), env, cfg.context_episodes).to(device)
    optimizer = configure_optimizer(model, cfg.trainer.lr, cfg.trainer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.trainer.warmup_steps, cfg.trainer.steps)
    )
    generator = torch.Generator().manual_seed(cfg.seed)

    start = 0
    checkpoint = latest_checkpoint(run_dir) if cfg.trainer.resume else None
    if checkpoint is not None:
        start, extra = load_checkpoint(
            checkpoint,
            models={"model": model},
            optimizers={"opt": optimizer},
            schedulers={"lr": scheduler},
        )
        if extra["identity"] != run_identity(cfg):
            raise ValueError(
                f"{checkpoint} was written by a run with {extra['identity']}, not "
                f"{run_identity(cfg)}; use a new run directory or trainer.resume=false"
            )
        generator.set_state(extra["generator"])

    with open_dict(cfg):
        cfg.env = env  # the dataset's environment, for eval
    logger = open_run(run_dir, cfg, project="algo_distill", step=start, resumed_from=checkpoint)
    flops_per_token = model.flops_per_token()

    metrics: dict[str, float] = {}
    tokens_done, clock = 0, time.perf_counter()
    bar = tqdm(
        range(start, cfg.trainer.steps),
        initial=start,
        total=cfg.trainer.steps,
        disable=not cfg.logging.progress,
        desc=f"algo_distill {cfg.method} seed {cfg.seed}",
    )
    for step in bar:
        model.train()
        tokens, actions = windows.sample(cfg.trainer.batch_size, generator)
        logits = model({k: v.to(device) for k, v in tokens.items()})
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), actions.to(device).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        optimizer.step()
        scheduler.step()
        tokens_done += actions.numel()
        done = step + 1
        if (
            done % cfg.logging.console_every == 0
            or done % cfg.trainer.eval_every == 0
            or done == cfg.trainer.steps
        ):
            elapsed = time.perf_counter() - clock
            speed = {
                "tokens_per_s": tokens_done / elapsed,
                "model_flops_per_s": tokens_done * flops_per_token / elapsed,
            }
            record = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], **speed}
            if done % cfg.trainer.eval_every == 0 or done == cfg.trainer.steps:
                metrics = quick_eval(model, manifest, cfg)
                record.update(metrics)
            logger.log(done, record)
            tokens_done, clock = 0, time.perf_counter()
        if done % cfg.trainer.checkpoint_every == 0 or done == cfg.trainer.steps:
            save_checkpoint(
                run_dir,
                done,
                models={"model": model},
                optimizers={"opt": optimizer},
                schedulers={"lr": scheduler},
                extra={"generator": generator.get_state(), "identity": run_identity(cfg)},
                keep_last=cfg.trainer.keep_last,
            )
    logger.close()
    return metrics


def quick_eval(model: torch.nn.Module, manifest: dict, cfg: DictConfig) -> dict[str, float]:
    """Short in-context rollout on the validation tasks (never the test tasks): return of the
    first and last episode."""
    env = eval_env(manifest, cfg.trainer.eval_copies, "val")
    returns = in_context_rollout(model, env, cfg.trainer.eval_episodes, seed=cfg.seed + 10_000)
    return {
        "val/return_first": float(returns[:, 0].mean()),
        "val/return_last": float(returns[:, -1].mean()),
    }


def run_identity(cfg: DictConfig) -> dict:
    """What a checkpoint must match to be resumed: data, method, architecture, seed."""
    return {
        "dataset": str(cfg.dataset),
        "method": cfg.method,
        "model": OmegaConf.to_container(cfg.model),
        "context_episodes": cfg.context_episodes,
        "subsample_every": cfg.subsample_every,
        "seed": cfg.seed,
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    summary = "  ".join(f"{k}={v:.2f}" for k, v in metrics.items())
    print(f"[algo_distill] {cfg.method} seed {cfg.seed} {run_dir}: {summary}")


if __name__ == "__main__":
    main()
