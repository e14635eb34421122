"""Recurrent PPO with S5, LSTM, GRU or Transformer memory (Lu et al. 2023, §4–5).

    python -m s4rl.train model=s5 task=memory_length task.memory_length=40
    python -m s4rl.train model=gru task=repeat_previous
    python -m s4rl.train -m experiment=small                      # the small-tier sweep

PureJaxRL-style recurrent PPO, every step in this file: `num_envs` environments are stepped
for `num_steps` steps with the memory in its one-step mode, the hidden state is carried across
rollouts and reset at episode starts; the update replays whole sequences (minibatches over
environments) from the state each sequence started the rollout with, in the parallel mode —
for S5 one resettable scan over a (B, T) batch with the episode starts inside it (§3).
Results table: s4rl/README.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.logging import WANDB_MODES, open_run
from common.seeding import seed_everything
from s4rl.envs import make_env
from s4rl.model import ActorCritic, build_core

MODELS = ("s5", "lstm", "gru", "transformer")
SCANS = ("auto", "reference", "triton", "chunked")


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any work starts, naming the field and what is allowed."""
    for key in ("total_steps", "num_envs", "threads"):
        check_number(cfg, key, integer=True)
    m = cfg.model
    check_choice(m, "name", "model.", MODELS)
    for key in ("width", "layers"):
        check_number(m, key, "model.", integer=True)
    if m.name == "s5":
        check_choice(m, "scan", "model.", SCANS)
        for key in ("state_size", "blocks"):
            check_number(m, key, "model.", integer=True)
        if m.state_size % (2 * m.blocks):
            fail("model.state_size", m.state_size, f"a multiple of 2·model.blocks={2 * m.blocks}")
    if m.name == "transformer":
        check_number(m, "heads", "model.", integer=True)
        if m.width % m.heads:
            fail("model.heads", m.heads, f"a divisor of model.width={m.width}")
    p = cfg.ppo
    for key in ("num_steps", "update_epochs", "num_minibatches"):
        check_number(p, key, "ppo.", integer=True)
    if cfg.num_envs % p.num_minibatches:
        fail("ppo.num_minibatches", p.num_minibatches, f"a divisor of num_envs={cfg.num_envs}")
    for key in ("gamma", "gae_lambda"):
        check_number(p, key, "ppo.", low=None)
        if not 0.0 < p[key] <= 1.0:
            fail(f"ppo.{key}", p[key], "a float in (0, 1]")
    for key in ("lr", "clip_ratio", "max_grad_norm"):
        check_number(p, key, "ppo.")
    if cfg.total_steps < cfg.num_envs * p.num_steps:
        fail("total_steps", cfg.total_steps, f">= one rollout, {cfg.num_envs * p.num_steps}")
    check_number(cfg.trainer, "checkpoint_every", "trainer.", integer=True)
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)


def build_agent(cfg: DictConfig, env) -> ActorCritic:
    space = env.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    action_dim = int(space.n) if discrete else int(space.shape[0])
    return ActorCritic(env.obs_dim, action_dim, discrete, build_core(cfg.model), cfg.model.width)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) over (T, B); dones[t] = the episode ended at step t, so no
    bootstrap through it. Returns (advantages, returns)."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * following * live - values[t]
        last = delta + gamma * lam * live * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    agent: ActorCritic, batch: dict[str, torch.Tensor], p: DictConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + clipped value loss − entropy bonus over whole sequences (B, T)."""
    dist, value, _ = agent(batch["obs"], batch["reset"], batch["state"])
    log_prob = agent.log_prob(dist, batch["action"])
    log_ratio = log_prob - batch["log_prob"]
    ratio = log_ratio.exp()
    adv = batch["advantage"]
    if p.norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    actor = -torch.min(ratio * adv, ratio.clamp(1 - p.clip_ratio, 1 + p.clip_ratio) * adv).mean()
    old_value = batch["value"]
    clipped = old_value + (value - old_value).clamp(-p.clip_ratio, p.clip_ratio)
    critic = (
        0.5 * torch.max((value - batch["return"]) ** 2, (clipped - batch["return"]) ** 2).mean()
    )
    entropy = agent.entropy(dist).mean()
    loss = actor + p.vf_coef * critic - p.ent_coef * entropy
    with torch.no_grad():
        stats = {
            "loss/actor": actor.item(),
            "loss/critic": critic.item(),
            "entropy": entropy.item(),
            "approx_kl": ((ratio - 1) - log_ratio).mean().item(),
            "clip_fraction": ((ratio - 1).abs() > p.clip_ratio).float().mean().item(),
        }
    return loss, stats


def run_identity(cfg: DictConfig) -> dict:
    """What a checkpoint must match to be resumed."""
    return {
        "task": OmegaConf.to_container(cfg.task),
        "model": OmegaConf.to_container(cfg.model),
        "ppo": OmegaConf.to_container(cfg.ppo),
        "num_envs": cfg.num_envs,
        "seed": cfg.seed,
        "total_steps": cfg.total_steps,
    }


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train one agent; returns the last iteration's logged metrics."""
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    env = make_env(cfg.task, cfg.num_envs, cfg.seed)
    agent = build_agent(cfg, env).to(device)
    p, num_envs = cfg.ppo, cfg.num_envs
    optimizer = torch.optim.Adam(agent.parameters(), lr=p.lr, eps=1e-5)
    rollout_steps = num_envs * p.num_steps
    num_iterations = cfg.total_steps // rollout_steps
    envs_per_minibatch = num_envs // p.num_minibatches

    start, global_step = 0, 0
    checkpoint = latest_checkpoint(run_dir) if cfg.trainer.resume else None
    if checkpoint is not None:
        start, extra = load_checkpoint(
            checkpoint, models={"agent": agent}, optimizers={"adam": optimizer}
        )
        if extra["identity"] != run_identity(cfg):
            raise ValueError(
                f"{checkpoint} was written by a run with {extra['identity']}, not "
                f"{run_identity(cfg)}; use a new run directory or trainer.resume=false"
            )
        global_step = extra["global_step"]
    logger = open_run(run_dir, cfg, project="s4rl", step=global_step, resumed_from=checkpoint)

    # Rollout storage, preallocated once (time-major: step × env).
    obs_buf = torch.zeros(p.num_steps, num_envs, env.obs_dim, device=device)
    act_shape = () if agent.discrete else (env.action_space.shape[0],)
    act_buf = torch.zeros(p.num_steps, num_envs, *act_shape, device=device)
    reset_buf = torch.zeros(p.num_steps, num_envs, dtype=torch.bool, device=device)
    logp_buf, val_buf, rew_buf, done_buf = (
        torch.zeros(p.num_steps, num_envs, device=device) for _ in range(4)
    )

    # A resumed run starts fresh episodes (environment states are not checkpointed).
    next_obs = torch.as_tensor(env.reset(), device=device)
    next_reset = torch.ones(num_envs, dtype=torch.bool, device=device)
    state = agent.initial_state(num_envs).to(device)
    metrics: dict[str, float] = {}
    clock, steps_at_clock = time.perf_counter(), global_step
    bar = tqdm(
        range(start, num_iterations),
        initial=start,
        total=num_iterations,
        disable=not cfg.logging.progress,
        desc=f"s4rl {cfg.task.label} {cfg.model.label} seed {cfg.seed}",
    )
    for iteration in bar:
        if p.anneal_lr:
            optimizer.param_groups[0]["lr"] = p.lr * (1.0 - iteration / num_iterations)
        rollout_start = time.perf_counter()
        start_state = state
        finished: dict[str, list[float]] = {}
        with torch.no_grad():
            for t in range(p.num_steps):
                obs_buf[t], reset_buf[t] = next_obs, next_reset
                dist, value, state = agent.step(next_obs, next_reset, state)
                action = dist.sample()
                act_buf[t], val_buf[t] = action, value
                logp_buf[t] = agent.log_prob(dist, action)
                obs, reward, done, info = env.step(action.cpu().numpy())
                rew_buf[t] = torch.as_tensor(reward, device=device)
                done_buf[t] = torch.as_tensor(done, dtype=torch.float32, device=device)
                next_obs = torch.as_tensor(obs, device=device)
                next_reset = torch.as_tensor(done, device=device)
                # The envs' info arrays are (B,) floats, NaN where nothing ended (s4rl.envs).
                for key in ("episode_return", "episode_length", "success"):
                    if key in info and done.any():
                        finished.setdefault(key, []).extend(info[key][done].tolist())
                if "trial_return" in info:
                    trial = ~np.isnan(info["trial_return"])
                    for index, ret in zip(
                        info["trial_index"][trial], info["trial_return"][trial], strict=True
                    ):
                        finished.setdefault(f"trial_return/{int(index)}", []).append(float(ret))
            global_step += rollout_steps
            _, next_value, _ = agent.step(next_obs, next_reset, state)
            advantages, returns = compute_gae(
                rew_buf, val_buf, done_buf, next_value, p.gamma, p.gae_lambda
            )
        rollout_time = time.perf_counter() - rollout_start

        update_start = time.perf_counter()
        # Batch-major views for the parallel mode: (B, T, ...).
        data = {
            "obs": obs_buf.transpose(0, 1),
            "reset": reset_buf.transpose(0, 1),
            "action": act_buf.transpose(0, 1),
            "log_prob": logp_buf.T,
            "value": val_buf.T,
            "advantage": advantages.T,
            "return": returns.T,
        }
        sums: dict[str, float] = {}
        for _ in range(p.update_epochs):
            order = torch.randperm(num_envs, device=device)
            for begin in range(0, num_envs, envs_per_minibatch):
                idx = order[begin : begin + envs_per_minibatch]
                batch = {key: value[idx] for key, value in data.items()}
                batch["state"] = start_state[..., idx, :]
                loss, stats = ppo_loss(agent, batch, p)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                    agent.parameters(), p.max_grad_norm
                ).item()
                optimizer.step()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
        update_time = time.perf_counter() - update_start

        updates = p.update_epochs * p.num_minibatches
        metrics = {key: value / updates for key, value in sums.items()}
        elapsed = time.perf_counter() - clock
        metrics.update(
            {
                "iteration": iteration + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "steps_per_s": (global_step - steps_at_clock) / elapsed,
                "rollout_s": rollout_time,
                "update_s": update_time,
            }
        )
        for key, values in finished.items():
            if values:
                name = {"episode_return": "episodic_return", "episode_length": "episodic_length"}
                metrics[name.get(key, key)] = float(np.mean(values))
        if "episode_return" in finished:
            metrics["episodes"] = len(finished["episode_return"])
        logger.log(global_step, metrics)
        bar.set_postfix(
            ret=metrics.get("episodic_return", float("nan")), sps=int(metrics["steps_per_s"])
        )
        done_iterations = iteration + 1
        if done_iterations % cfg.trainer.checkpoint_every == 0 or done_iterations == num_iterations:
            save_checkpoint(
                run_dir,
                done_iterations,
                models={"agent": agent},
                optimizers={"adam": optimizer},
                extra={"identity": run_identity(cfg), "global_step": global_step},
                keep_last=cfg.trainer.keep_last,
            )
    env.close()
    logger.close()
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    shown = {k: metrics[k] for k in ("episodic_return", "success", "steps_per_s") if k in metrics}
    print(f"[s4rl] {run_dir}: " + "  ".join(f"{k}={v:.3f}" for k, v in shown.items()))


if __name__ == "__main__":
    main()
