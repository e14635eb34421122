"""Train PPO, PPO without its clipping heuristics, or GMOM on a gymnasium MuJoCo task.

    python -m gmom_ppo.train env.id=Hopper-v5                      # PPO, all heuristics on
    python -m gmom_ppo.train algo=ppo_noclip diagnostics.enabled=true
    python -m gmom_ppo.train -m experiment=small                   # the small-tier sweep

One file shows the whole algorithm (Garg et al. §2, Algorithm 1 with the usual PPO details):
collect `num_steps` transitions per env into preallocated tensors, GAE, then `update_epochs`
passes of `num_minibatches` Adam steps. `algo=gmom` replaces the minibatch mean gradient and
the three clipping heuristics by the geometric median of block means of the per-sample
gradients (§5). With `diagnostics.enabled=true`, the kurtosis of per-sample gradients, ratios
and advantages is logged at the start of every epoch of an update (§3–4).
Results table: gmom_ppo/README.md.
"""

from __future__ import annotations

import difflib
import time
from functools import partial
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
from gmom_ppo.diagnostics import (
    GROUPS,
    flatten_groups,
    gradient_kurtosis,
    kurtosis,
    parameter_group,
    per_sample_grads,
)
from gmom_ppo.gmom import median_of_means
from gmom_ppo.ppo import (
    Agent,
    LossConfig,
    ObservationNormalizer,
    RewardNormalizer,
    compute_gae,
    make_envs,
    ppo_losses,
)

ALGOS = ("ppo", "gmom")


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any work starts, naming the field and what is allowed."""
    if cfg.env.id not in gym.registry:
        close = difflib.get_close_matches(str(cfg.env.id), list(gym.registry), n=3)
        fail("env.id", cfg.env.id, f"a registered gymnasium id (close matches: {close})")
    check_choice(cfg.algo, "name", "algo.", ALGOS)
    for key in ("total_steps", "threads"):
        check_number(cfg, key, integer=True)
    check_number(cfg.env, "num_envs", "env.", integer=True)
    p = cfg.ppo
    for key in ("num_steps", "update_epochs", "num_minibatches", "hidden"):
        check_number(p, key, "ppo.", integer=True)
    batch = cfg.env.num_envs * p.num_steps
    if batch % p.num_minibatches:
        fail("ppo.num_minibatches", p.num_minibatches, f"a divisor of the batch size {batch}")
    for key in ("gamma", "gae_lambda"):
        check_number(p, key, "ppo.", low=None)
        if not 0.0 < p[key] <= 1.0:
            fail(f"ppo.{key}", p[key], "a float in (0, 1]")
    for key in ("lr", "obs_clip", "reward_clip", "clip_value_range"):
        check_number(p, key, "ppo.")
    for key in ("clip_ratio", "max_grad_norm"):
        if p[key] is not None:
            check_number(p, key, "ppo.", low=None)
            if p[key] <= 0:
                fail(f"ppo.{key}", p[key], "null (off) or a positive float")
    if not isinstance(p.clip_value, bool):
        fail("ppo.clip_value", p.clip_value, "true or false")
    minibatch = batch // p.num_minibatches
    g = cfg.gmom
    check_number(g, "num_blocks", "gmom.", integer=True, low=1, high=minibatch, inclusive=True)
    for key in ("tol", "eps"):
        check_number(g, key, "gmom.")
    check_number(g, "max_iter", "gmom.", integer=True)
    d = cfg.diagnostics
    check_number(d, "samples", "diagnostics.", integer=True, low=4, high=batch, inclusive=True)
    check_number(d, "every", "diagnostics.", integer=True)
    check_number(cfg.trainer, "checkpoint_every", "trainer.", integer=True)
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)


def loss_config(cfg: DictConfig) -> LossConfig:
    p = cfg.ppo
    return LossConfig(p.clip_ratio, p.clip_value, p.clip_value_range, p.ent_coef, p.vf_coef)


def set_gmom_gradients(
    agent: Agent, grads: dict[str, torch.Tensor], gmom: DictConfig
) -> dict[str, float]:
    """Write GMOM(per-sample grads) into each parameter's .grad, separately for actor and critic
    (§5: the geometric median of the k block means replaces the minibatch mean)."""
    flat = flatten_groups(grads)
    params = dict(agent.named_parameters())
    stats = {}
    for group in GROUPS:
        median, iterations = median_of_means(
            flat[group], gmom.num_blocks, gmom.tol, gmom.max_iter, gmom.eps
        )
        stats[f"gmom/{group}_iterations"] = iterations
        offset = 0
        for name in grads:  # the order flatten_groups concatenated them in
            if parameter_group(name) != group:
                continue
            size = params[name].numel()
            params[name].grad = median[offset : offset + size].view_as(params[name]).clone()
            offset += size
    return stats


def run_identity(cfg: DictConfig) -> dict:
    """What a checkpoint must match to be resumed."""
    return {
        "env": OmegaConf.to_container(cfg.env),
        "algo": cfg.algo.name,
        "ppo": OmegaConf.to_container(cfg.ppo),
        "seed": cfg.seed,
        "total_steps": cfg.total_steps,
    }


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train one agent; returns the last iteration's logged metrics."""
    validate(cfg)
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    envs = make_envs(cfg.env.id, cfg.env.num_envs, cfg.seed)
    if not isinstance(envs.single_action_space, gym.spaces.Box):
        envs.close()
        fail("env.id", cfg.env.id, "an environment with a continuous (Box) action space")
    p, num_envs = cfg.ppo, cfg.env.num_envs
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    low, high = envs.single_action_space.low, envs.single_action_space.high
    batch_size = num_envs * p.num_steps
    minibatch_size = batch_size // p.num_minibatches
    num_iterations = cfg.total_steps // batch_size
    losses_of = partial(ppo_losses, cfg=loss_config(cfg))
    gmom = cfg.algo.name == "gmom"

    agent = Agent(obs_dim, act_dim, p.hidden).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=p.lr, eps=1e-5)
    obs_norm = ObservationNormalizer(obs_dim, p.obs_clip) if p.norm_obs else None
    rew_norm = RewardNormalizer(num_envs, p.gamma, p.reward_clip) if p.norm_reward else None

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
        if obs_norm is not None:
            obs_norm.rms.load_state_dict(extra["obs_rms"])
        if rew_norm is not None:
            rew_norm.rms.load_state_dict(extra["return_rms"])

    logger = open_run(run_dir, cfg, project="gmom_ppo", step=global_step, resumed_from=checkpoint)

    # Rollout storage, preallocated once (time-major: step × env).
    obs_buf = torch.zeros(p.num_steps, num_envs, obs_dim, device=device)
    act_buf = torch.zeros(p.num_steps, num_envs, act_dim, device=device)
    logp_buf, rew_buf, done_buf, val_buf = (
        torch.zeros(p.num_steps, num_envs, device=device) for _ in range(4)
    )

    def observe(raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(obs_norm(raw) if obs_norm else raw.astype(np.float32)).to(device)

    # A resumed run starts fresh episodes (simulator states are not checkpointed).
    raw_obs, _ = envs.reset(seed=cfg.seed + start)
    next_obs, next_done = observe(raw_obs), torch.zeros(num_envs, device=device)
    episode_return, episode_length = np.zeros(num_envs), np.zeros(num_envs, dtype=np.int64)
    metrics: dict[str, float] = {}
    clock, steps_at_clock = time.perf_counter(), global_step
    bar = tqdm(
        range(start, num_iterations),
        initial=start,
        total=num_iterations,
        disable=not cfg.logging.progress,
        desc=f"gmom_ppo {cfg.env.id} {cfg.algo.name} seed {cfg.seed}",
    )
    for iteration in bar:
        if p.anneal_lr:
            optimizer.param_groups[0]["lr"] = p.lr * (1.0 - iteration / num_iterations)

        rollout_start = time.perf_counter()
        finished_returns, finished_lengths = [], []
        for step in range(p.num_steps):
            global_step += num_envs
            obs_buf[step] = next_obs
            done_buf[step] = next_done
            action, log_prob, value = agent.act(next_obs)
            act_buf[step], logp_buf[step], val_buf[step] = action, log_prob, value
            raw_obs, reward, terminated, truncated, _ = envs.step(
                np.clip(action.cpu().numpy(), low, high)
            )
            done = terminated | truncated
            episode_return += reward
            episode_length += 1
            if done.any():
                finished_returns.extend(episode_return[done].tolist())
                finished_lengths.extend(episode_length[done].tolist())
                episode_return[done], episode_length[done] = 0.0, 0
            scaled = rew_norm(reward, done) if rew_norm else reward.astype(np.float32)
            rew_buf[step] = torch.from_numpy(scaled).to(device)
            next_obs = observe(raw_obs)
            next_done = torch.from_numpy(done.astype(np.float32)).to(device)
        rollout_time = time.perf_counter() - rollout_start

        update_start = time.perf_counter()
        with torch.no_grad():
            next_value = agent.critic(next_obs).squeeze(-1)
            advantages, returns = compute_gae(
                rew_buf, val_buf, done_buf, next_value, next_done, p.gamma, p.gae_lambda
            )
        b_obs, b_act = obs_buf.reshape(batch_size, obs_dim), act_buf.reshape(batch_size, act_dim)
        b_logp, b_adv = logp_buf.reshape(-1), advantages.reshape(-1)
        b_ret, b_val = returns.reshape(-1), val_buf.reshape(-1)

        diagnose = cfg.diagnostics.enabled and iteration % cfg.diagnostics.every == 0
        if diagnose:
            probe = torch.randperm(batch_size, device=device)[: cfg.diagnostics.samples]
            probe_adv = b_adv[probe]
            if p.norm_adv:
                probe_adv = (probe_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
            probe_batch = (b_obs[probe], b_act[probe], b_logp[probe], probe_adv)
            probe_batch += (b_ret[probe], b_val[probe])

        sums: dict[str, float] = {}
        for epoch in range(p.update_epochs + 1):
            if diagnose:
                record = {"diag_epoch": epoch, "diag_iteration": iteration + 1}
                record.update(gradient_kurtosis(per_sample_grads(agent, losses_of, *probe_batch)))
                with torch.no_grad():
                    log_probs, _, _ = agent(b_obs, b_act)
                    ratio = torch.exp(log_probs - b_logp)
                record["kurtosis/ratio"] = kurtosis(ratio).item()
                record["kurtosis/advantage"] = kurtosis(b_adv).item()
                logger.log(global_step, record, console=False)
            if epoch == p.update_epochs:
                break
            order = torch.randperm(batch_size, device=device)
            for begin in range(0, batch_size, minibatch_size):
                idx = order[begin : begin + minibatch_size]
                mb_adv = b_adv[idx]
                if p.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                mb = (b_obs[idx], b_act[idx], b_logp[idx], mb_adv, b_ret[idx], b_val[idx])
                out = losses_of(agent, *mb)
                optimizer.zero_grad(set_to_none=True)
                if gmom:
                    stats = set_gmom_gradients(
                        agent, per_sample_grads(agent, losses_of, *mb), cfg.gmom
                    )
                else:
                    out["total"].mean().backward()
                    stats = {}
                    if p.max_grad_norm is not None:
                        norm = torch.nn.utils.clip_grad_norm_(agent.parameters(), p.max_grad_norm)
                        stats["grad_norm"] = norm.item()
                optimizer.step()
                with torch.no_grad():
                    stats["loss/actor"] = out["actor"].mean().item()
                    stats["loss/critic"] = out["critic"].mean().item()
                    stats["entropy"] = out["entropy"].mean().item()
                    stats["approx_kl"] = ((out["ratio"] - 1) - out["log_ratio"]).mean().item()
                    if p.clip_ratio is not None:
                        stats["clip_fraction"] = (
                            ((out["ratio"] - 1.0).abs() > p.clip_ratio).float().mean().item()
                        )
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
        if finished_returns:
            metrics["episodic_return"] = float(np.mean(finished_returns))
            metrics["episodic_length"] = float(np.mean(finished_lengths))
            metrics["episodes"] = len(finished_returns)
        logger.log(global_step, metrics)
        bar.set_postfix(
            ret=metrics.get("episodic_return", float("nan")), sps=int(metrics["steps_per_s"])
        )
        done_iterations = iteration + 1
        if done_iterations % cfg.trainer.checkpoint_every == 0 or done_iterations == num_iterations:
            extra = {"identity": run_identity(cfg), "global_step": global_step}
            if obs_norm is not None:
                extra["obs_rms"] = obs_norm.rms.state_dict()
            if rew_norm is not None:
                extra["return_rms"] = rew_norm.rms.state_dict()
            save_checkpoint(
                run_dir,
                done_iterations,
                models={"agent": agent},
                optimizers={"adam": optimizer},
                extra=extra,
                keep_last=cfg.trainer.keep_last,
            )
    envs.close()
    logger.close()
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    shown = {k: metrics[k] for k in ("episodic_return", "steps_per_s") if k in metrics}
    print(f"[gmom_ppo] {run_dir}: " + "  ".join(f"{k}={v:.1f}" for k, v in shown.items()))


if __name__ == "__main__":
    main()
