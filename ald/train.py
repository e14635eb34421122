"""Actor-Learner Distillation: the learner process (Parisotto & Salakhutdinov 2021, §4).

    python -m ald.train algo=ald            # GTrXL learner, LSTM actors distilled from it
    python -m ald.train algo=lstm           # LSTM alone (actor = learner = LSTM)
    python -m ald.train algo=transformer    # GTrXL alone (actor = learner = GTrXL)
    python -m ald.train -m experiment=small # the small-tier sweep (3 algos × 3 seeds)

Asynchronous actors (ald.runtime) push unrolls; for each one the learner takes one V-trace step
(IMPALA, Espeholt et al. 2018) on its own network, carrying its memory / recurrent state along
each actor's environment stream. With `algo=ald` the learner side also holds a copy of the actor
network and distils it from the learner on a small replay of recent windows of unrolls
(`algo.distill_steps` gradient steps per RL step, the paper's key ratio), and the RL loss pulls
the learner toward the actor's policy (`algo.actor_reg`). Every `runtime.publish_every` updates
the acting network's weights go to the actors. Results table: ald/README.md.
"""

from __future__ import annotations

import random
import time
from collections import deque
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ald.envs import TASKS, make_env
from ald.losses import distillation_loss, learner_loss
from ald.model import build_net
from ald.runtime import RUNTIMES
from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.logging import WANDB_MODES, open_run
from common.seeding import seed_everything

ALGOS = {"ald": ("gtrxl", "lstm"), "lstm": ("lstm", "lstm"), "transformer": ("gtrxl", "gtrxl")}


def validate(cfg: DictConfig) -> None:
    """Reject bad values (types and ranges) before any work starts, naming the field."""
    for key in ("total_steps", "num_envs", "unroll", "threads"):
        check_number(cfg, key, integer=True)
    check_choice(cfg.algo, "name", "algo.", ALGOS)
    check_choice(cfg.task, "name", "task.", TASKS)
    if cfg.task.name == "imaze":
        check_number(cfg.task, "length", "task.", integer=True, low=1)
    for key in ("width", "layers", "heads", "memory"):
        check_number(cfg.networks.gtrxl, key, "networks.gtrxl.", integer=True)
    g = cfg.networks.gtrxl
    if g.width % g.heads or g.width // g.heads not in (32, 64, 128):
        fail("networks.gtrxl.heads", g.heads, "width / heads in {32, 64, 128} (attention kernel)")
    check_number(cfg.networks.lstm, "width", "networks.lstm.", integer=True)
    for key in ("lr", "gamma", "max_grad_norm"):
        check_number(cfg.rl, key, "rl.")
    check_number(cfg.rl, "epochs", "rl.", integer=True)
    if cfg.rl.gamma > 1:
        fail("rl.gamma", cfg.rl.gamma, "a discount in (0, 1]")
    for key in ("entropy", "value", "rho_bar", "c_bar", "lam"):
        check_number(cfg.rl, key, "rl.", inclusive=True)
    check_number(cfg.algo, "distill_steps", "algo.", integer=True, inclusive=True)
    check_number(cfg.algo, "actor_reg", "algo.", inclusive=True)
    for key in ("lr", "value_coef"):
        check_number(cfg.distill, key, "distill.")
    for key in ("replay", "context"):
        check_number(cfg.distill, key, "distill.", integer=True)
    check_choice(cfg.runtime, "name", "runtime.", RUNTIMES)
    for key in ("num_actors", "queue_size", "publish_every"):
        check_number(cfg.runtime, key, "runtime.", integer=True)
    if cfg.total_steps < cfg.num_envs * cfg.unroll:
        fail("total_steps", cfg.total_steps, f">= one unroll, {cfg.num_envs * cfg.unroll}")
    for key in ("checkpoint_every", "keep_last", "log_every"):
        check_number(cfg.trainer, key, "trainer.", integer=True)
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)


def _spec(cfg: DictConfig, name: str) -> dict:
    """The network config `networks.<name>` as the plain dict `build_net` takes."""
    return {"name": name, **OmegaConf.to_container(cfg.networks[name])}


def run_identity(cfg: DictConfig) -> dict:
    """What a checkpoint must match to be resumed."""
    identity = {k: OmegaConf.to_container(cfg[k]) for k in ("task", "algo", "networks", "rl")}
    identity.update(distill=OmegaConf.to_container(cfg.distill), seed=cfg.seed)
    identity.update(num_envs=cfg.num_envs, unroll=cfg.unroll)
    return identity


def _to_tensors(item: dict, device: torch.device) -> dict[str, torch.Tensor]:
    kinds = {"obs": torch.float32, "first": torch.bool, "action": torch.int64}
    keys = ("obs", "first", "action", "behaviour_logits", "reward", "done")
    return {
        k: torch.as_tensor(item[k], dtype=kinds.get(k, torch.float32), device=device) for k in keys
    }


class Learner:
    """The learner's networks, optimisers and per-stream recurrent states."""

    def __init__(self, cfg: DictConfig, obs_dim: int, num_actions: int, device: torch.device):
        learner_name, actor_name = ALGOS[cfg.algo.name]
        learner_spec, actor_spec = _spec(cfg, learner_name), _spec(cfg, actor_name)
        self.cfg, self.device = cfg, device
        self.net = build_net(learner_spec, obs_dim, num_actions).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.rl.lr)
        self.distilled = cfg.algo.name == "ald"
        if self.distilled:
            self.actor = build_net(actor_spec, obs_dim, num_actions).to(device)
            self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.distill.lr)
        else:
            self.actor, self.actor_optimizer = self.net, None
        self.actor_spec = actor_spec
        self.states: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.history: dict[int, deque] = {}  # per stream: its last `distill.context` unrolls
        self.replay: deque = deque(maxlen=cfg.distill.replay)
        self.coefs = {"actor_reg": float(cfg.algo.actor_reg) if self.distilled else 0.0}

    def modules(self) -> tuple[dict, dict]:
        models, optimizers = {"learner": self.net}, {"learner": self.optimizer}
        if self.distilled:
            models["actor"], optimizers["actor"] = self.actor, self.actor_optimizer
        return models, optimizers

    def _stream_state(self, stream: int, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if stream not in self.states:
            actor_state = self.actor.initial_state(batch) if self.distilled else None
            self.states[stream] = (self.net.initial_state(batch), actor_state)
        return self.states[stream]

    def update(self, item: dict) -> dict[str, float]:
        """One V-trace step of the learner on an unroll, then (ALD) the distillation steps."""
        batch = _to_tensors(item, self.device)
        unroll = batch["action"].shape[1]
        state, actor_state = self._stream_state(item["actor"], batch["action"].shape[0])
        for epoch in range(self.cfg.rl.epochs):
            logits, values, end_state = self.net(
                batch["obs"], batch["first"], state, state_after=unroll
            )
            if epoch == 0:  # the stream's memory and the distillation targets: first pass
                new_state, targets = end_state, (logits[:, :-1].detach(), values[:, :-1].detach())
            loss, stats = learner_loss(logits, values, batch, self.cfg.rl, self.coefs)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                self.net.parameters(), self.cfg.rl.max_grad_norm
            ).item()
            self.optimizer.step()
        new_actor_state = None
        if self.distilled:
            history = self.history.setdefault(item["actor"], deque(maxlen=self.cfg.distill.context))
            history.append(
                {
                    "obs": batch["obs"][:, :unroll],
                    "first": batch["first"][:, :unroll],
                    "state": actor_state,
                    "logits": targets[0],
                    "values": targets[1],
                }
            )
            window = {
                k: torch.cat([h[k] for h in history], 1)
                for k in ("obs", "first", "logits", "values")
            }
            window["state"] = history[0]["state"]
            self.replay.append(window)
            new_actor_state = self._distil(stats)
        self.states[item["actor"]] = (new_state.detach(), new_actor_state)
        return stats

    def _distil(self, stats: dict[str, float]) -> torch.Tensor | None:
        """`algo.distill_steps` steps on the replay of windows (each: a stream's last
        `distill.context` unrolls, back-propagated through as one sequence from the actor state
        at its start), the newest window first; returns the actor network's state at the end of
        the newest unroll (for that stream's next unroll)."""
        newest_state = None
        sums: dict[str, float] = {}
        for step in range(self.cfg.algo.distill_steps):
            sample = self.replay[-1] if step == 0 else random.choice(self.replay)
            logits, values, end_state = self.actor(sample["obs"], sample["first"], sample["state"])
            if step == 0:
                newest_state = end_state.detach()
            loss, parts = distillation_loss(
                logits, values, sample["logits"], sample["values"], self.cfg.distill.value_coef
            )
            self.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.rl.max_grad_norm)
            self.actor_optimizer.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        for key, value in sums.items():
            stats[key] = value / self.cfg.algo.distill_steps
        if newest_state is None:  # distill_steps = 0: still carry the actor's state forward
            with torch.no_grad():
                sample = self.replay[-1]
                newest_state = self.actor(sample["obs"], sample["first"], sample["state"])[2]
        return newest_state


def probe_env(task: DictConfig) -> tuple[int, int]:
    env = make_env(task, 1, 0)
    env.close()
    return env.obs_dim, env.num_actions


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train one agent; returns the last logged metrics."""
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    obs_dim, num_actions = probe_env(cfg.task)
    learner = Learner(cfg, obs_dim, num_actions, device)
    models, optimizers = learner.modules()
    steps_per_update = cfg.num_envs * cfg.unroll
    num_updates = cfg.total_steps // steps_per_update

    start, env_steps, elapsed_before = 0, 0, 0.0
    checkpoint = latest_checkpoint(run_dir) if cfg.trainer.resume else None
    if checkpoint is not None:
        start, extra = load_checkpoint(checkpoint, models=models, optimizers=optimizers)
        if extra["identity"] != run_identity(cfg):
            raise ValueError(
                f"{checkpoint} was written by a run with {extra['identity']}, not "
                f"{run_identity(cfg)}; use a new run directory or trainer.resume=false"
            )
        env_steps, elapsed_before = extra["env_steps"], extra["train_seconds"]
    logger = open_run(run_dir, cfg, project="ald", step=env_steps, resumed_from=checkpoint)
    metrics: dict[str, float] = {}
    if start >= num_updates:
        logger.close()
        return metrics

    runtime = RUNTIMES[cfg.runtime.name](cfg, learner.actor_spec, cfg.seed + start)
    clock = time.perf_counter()
    window: dict[str, list[float]] = {}
    bar = tqdm(
        range(start, num_updates),
        initial=start,
        total=num_updates,
        disable=not cfg.logging.progress,
        desc=f"ald {cfg.algo.name} seed {cfg.seed}",
    )
    try:
        runtime.publish(learner.actor, start)
        wait_started = time.perf_counter()
        for update in bar:
            item = runtime.get()
            learn_started = time.perf_counter()
            stats = learner.update(item)
            learn_s = time.perf_counter() - learn_started
            env_steps += steps_per_update
            done_updates = update + 1
            if done_updates % cfg.runtime.publish_every == 0:
                runtime.publish(learner.actor, done_updates)
            record = {
                "wait_s": learn_started - wait_started,
                "learn_s": learn_s,
                "act_s": item["act_s"],
                "env_s": item["env_s"],
                "policy_lag": update - item["version"],
                **stats,
            }
            for key, value in record.items():
                window.setdefault(key, []).append(value)
            for key, values in item["finished"].items():
                window.setdefault(key, []).extend(values)
            if done_updates % cfg.trainer.log_every == 0 or done_updates == num_updates:
                train_seconds = elapsed_before + time.perf_counter() - clock
                metrics = {k: float(np.mean(v)) for k, v in window.items() if len(v)}
                metrics["episodes"] = len(window.get("episode_return", []))
                metrics.update(
                    update=done_updates,
                    train_seconds=train_seconds,
                    steps_per_s=env_steps / max(train_seconds, 1e-9),
                )
                logger.log(env_steps, metrics)
                bar.set_postfix(
                    success=metrics.get("success", float("nan")), sps=int(metrics["steps_per_s"])
                )
                window = {}
            if done_updates % cfg.trainer.checkpoint_every == 0 or done_updates == num_updates:
                save_checkpoint(
                    run_dir,
                    done_updates,
                    models=models,
                    optimizers=optimizers,
                    extra={
                        "identity": run_identity(cfg),
                        "env_steps": env_steps,
                        "train_seconds": elapsed_before + time.perf_counter() - clock,
                        "actor_spec": learner.actor_spec,
                        "obs_dim": obs_dim,
                        "num_actions": num_actions,
                    },
                    keep_last=cfg.trainer.keep_last,
                )
            wait_started = time.perf_counter()
    finally:
        runtime.close()
        logger.close()
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    shown = {k: metrics[k] for k in ("success", "episode_return", "steps_per_s") if k in metrics}
    print(f"[ald] {run_dir}: " + "  ".join(f"{k}={v:.3f}" for k, v in shown.items()))


if __name__ == "__main__":
    main()
