"""Train sequence-model policies by factual and by counterfactual teaching (Ortega et al. §4).

    python -m causal_seq.train task=bandit model=gru seed=1
    python -m causal_seq.train -m experiment=small          # both tasks × both models × 5 seeds

Factual teaching fits P(a_t | h_t) on expert trajectories, so the expert's actions (which carry
information about θ) are in the context. Counterfactual teaching lets the model act with its own
sampled actions and supervises each step with the expert's action distribution for the true θ at
the state reached: the model's own actions enter only as interventions do(a). Both minimise the
same loss (cross-entropy to the expert's distribution); only whose actions fill the context differs.
Results table: causal_seq/README.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from causal_seq.data import TASKS, Task, make_task, rollout, sample_theta, token_dim
from causal_seq.model import MODELS, ModelConfig, build_model, configure_optimizer
from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.distributed import (
    DistInfo,
    cleanup,
    init_distributed,
    local_device,
    unwrap,
    wrap_ddp,
)
from common.logging import WANDB_MODES, open_run
from common.schedules import warmup_cosine
from common.seeding import seed_everything

TEACHING = ("factual", "counterfactual")


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any work starts, naming the field and what is allowed."""
    check_choice(cfg.task, "name", "task.", TASKS)
    check_choice(cfg.model, "name", "model.", MODELS)
    teaching = list(cfg.teaching)
    if not teaching or any(mode not in TEACHING for mode in teaching):
        fail("teaching", teaching, f"a non-empty list drawn from {TEACHING}")
    if len(set(teaching)) != len(teaching):
        fail("teaching", teaching, "each mode at most once")
    check_number(cfg.task, "horizon", "task.", integer=True)
    if cfg.task.name == "bandit":
        check_number(cfg.task, "num_arms", "task.", integer=True, low=2, inclusive=True)
        for key in ("p_best", "p_other"):
            check_number(cfg.task, key, "task.", high=1.0)
        if cfg.task.p_best <= cfg.task.p_other:
            fail("task.p_best", cfg.task.p_best, f"greater than task.p_other={cfg.task.p_other}")
    if cfg.task.name == "grid":
        check_number(cfg.task, "size", "task.", integer=True, low=None)
        if cfg.task.size < 3 or cfg.task.size % 2 == 0:
            fail("task.size", cfg.task.size, "an odd integer >= 3 (the start is the centre)")
        check_number(cfg.task, "signal_noise", "task.", low=None)
        if not 0.0 <= cfg.task.signal_noise < 0.5:
            fail("task.signal_noise", cfg.task.signal_noise, "a probability in [0, 0.5)")
    if cfg.model.name == "transformer":
        check_number(cfg.model, "max_len", "model.", integer=True)
        if cfg.model.max_len < cfg.task.horizon:
            fail("model.max_len", cfg.model.max_len, f">= task.horizon={cfg.task.horizon}")
    for key in ("steps", "batch_size", "eval_every", "eval_episodes", "checkpoint_every"):
        check_number(cfg.trainer, key, "trainer.", integer=True)
    check_number(cfg.trainer, "lr", "trainer.")
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)


def build_task(task_cfg: DictConfig) -> Task:
    kwargs = OmegaConf.to_container(task_cfg)
    return make_task(kwargs.pop("name"), **kwargs)


def model_config(model_cfg: DictConfig) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(model_cfg))


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """H(π*, π_model) averaged over batch and time: -Σ_a π*(a) log π_model(a)."""
    log_probs = logits.float().log_softmax(-1)
    return -(target_probs * log_probs.nan_to_num(neginf=0.0)).sum(-1).mean()


@torch.no_grad()
def quick_eval(task: Task, models: dict[str, torch.nn.Module], episodes: int, seed: int) -> dict:
    """Late-episode probability of an optimal action, per policy, on fixed evaluation latents."""
    metrics = {}
    policies: dict[str, Any] = {"posterior": "posterior", **models}
    late = max(1, task.horizon // 3)
    for name, policy in policies.items():
        generator = torch.Generator().manual_seed(seed)
        theta = sample_theta(task, episodes, generator)
        trajectory = rollout(task, policy, theta, generator)
        metrics[f"late_optimal/{name}"] = trajectory.optimal[:, -late:].mean().item()
        metrics[f"return/{name}"] = trajectory.mean_rewards.sum(1).mean().item()
    return metrics


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train every mode in `cfg.teaching`; returns the last quick-evaluation metrics (on the
    main process; other ranks of a torchrun job return {})."""
    validate(cfg)
    device = resolve_device(cfg.device)
    dist = init_distributed(device)
    device = local_device(device, dist)
    seed_everything(cfg.seed)
    task = build_task(cfg.task)
    models = {
        mode: build_model(token_dim(task), task.num_actions, model_config(cfg.model)).to(device)
        for mode in cfg.teaching
    }
    optimizers = {
        mode: configure_optimizer(m, cfg.trainer.lr, cfg.trainer.weight_decay)
        for mode, m in models.items()
    }
    schedule = warmup_cosine(cfg.trainer.warmup_steps, cfg.trainer.steps)
    schedulers = {
        mode: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for mode, opt in optimizers.items()
    }
    trained = {mode: wrap_ddp(m, dist) for mode, m in models.items()}
    # Each rank draws its own episodes; the evaluation latents are the same everywhere.
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + dist.rank)

    start = 0
    checkpoint = latest_checkpoint(run_dir) if cfg.trainer.resume else None
    if checkpoint is not None:
        start, extra = load_checkpoint(
            checkpoint, models=models, optimizers=optimizers, schedulers=schedulers
        )
        if extra["identity"] != run_identity(cfg, dist):
            raise ValueError(
                f"{checkpoint} was written by a run with {extra['identity']}, not "
                f"{run_identity(cfg, dist)}; use a new run directory or trainer.resume=false"
            )
        generator.set_state(extra["generator"][dist.rank])

    logger = open_run(
        run_dir,
        cfg,
        project="causal_seq",
        step=start,
        resumed_from=checkpoint,
        enabled=dist.is_main,
    )

    metrics: dict[str, float] = {}
    episodes_done, clock = 0, time.perf_counter()
    bar = tqdm(
        range(start, cfg.trainer.steps),
        initial=start,
        total=cfg.trainer.steps,
        disable=not (cfg.logging.progress and dist.is_main),
        desc=f"causal_seq {cfg.task.name}/{cfg.model.name} seed {cfg.seed}",
    )
    for step in bar:
        theta = sample_theta(task, cfg.trainer.batch_size, generator)
        losses = {}
        for mode in cfg.teaching:
            behaviour = "expert" if mode == "factual" else models[mode]
            trajectory = rollout(task, behaviour, theta, generator, posteriors=False)
            logits = trained[mode](trajectory.tokens.to(device))
            loss = soft_cross_entropy(logits, trajectory.expert_probs.to(device))
            optimizers[mode].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(models[mode].parameters(), cfg.trainer.grad_clip)
            optimizers[mode].step()
            schedulers[mode].step()
            losses[f"loss/{mode}"] = loss.item()
        episodes_done += cfg.trainer.batch_size * dist.world_size
        done = step + 1
        if dist.is_main and (done % cfg.trainer.eval_every == 0 or done == cfg.trainer.steps):
            metrics = quick_eval(
                task,
                {m: unwrap(model) for m, model in trained.items()},
                cfg.trainer.eval_episodes,
                seed=cfg.seed + 10_000,
            )
            elapsed = time.perf_counter() - clock
            logger.log(done, {**losses, **metrics, "episodes_per_s": episodes_done / elapsed})
        elif done % cfg.logging.console_every == 0:
            logger.log(done, losses)
        if done % cfg.trainer.checkpoint_every == 0 or done == cfg.trainer.steps:
            save_run_checkpoint(run_dir, done, cfg, models, optimizers, schedulers, generator, dist)
    logger.close()
    cleanup()
    return metrics


def run_identity(cfg: DictConfig, dist: DistInfo) -> dict:
    """What a checkpoint must match to be resumed: task, architecture, modes, seed, world size."""
    return {
        "task": OmegaConf.to_container(cfg.task),
        "model": OmegaConf.to_container(cfg.model),
        "teaching": list(cfg.teaching),
        "seed": cfg.seed,
        "world_size": dist.world_size,
    }


def save_run_checkpoint(run_dir, step, cfg, models, optimizers, schedulers, generator, dist):
    """Rank 0 writes; every rank's generator state is gathered so a resume is exact."""
    states = [generator.get_state()]
    if dist.enabled:
        states = [torch.empty_like(states[0]) for _ in range(dist.world_size)]
        torch.distributed.all_gather_object(states, generator.get_state())
    if dist.is_main:
        save_checkpoint(
            run_dir,
            step,
            models=models,
            optimizers=optimizers,
            schedulers=schedulers,
            extra={"generator": states, "identity": run_identity(cfg, dist)},
            keep_last=cfg.trainer.keep_last,
        )


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    if metrics:
        summary = "  ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith("late"))
        print(f"[causal_seq] {run_dir}: {summary}")


if __name__ == "__main__":
    main()
