"""gmom_ppo speed: env steps/s of our PPO vs a minimal single-file PPO loop, same machine.

    OMP_NUM_THREADS=1 python -m bench.gmom_ppo [--env Hopper-v5] [--steps 20480] [--repeats 2]

The baseline is the common single-file recipe (the layout of CleanRL's ppo_continuous_action):
gymnasium's per-env wrappers for action clipping, observation and reward normalisation and
episode statistics, torch.distributions.Normal, 1 env × 2048 steps, 10 epochs × 32 minibatches.
Ours is `gmom_ppo.train.run` with the same settings (diagnostics off). Whole runs (env creation
included) are timed with the repository's rule (bench.timing.best_seconds: a warm-up, then the
two loops take turns and the fastest run counts); the table also shows how the last run's
iterations split between collecting the rollout (env step + acting) and the update.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.distributions import Normal

from bench.timing import best_seconds
from common.logging import read_metrics
from gmom_ppo.ppo import compute_gae, mlp
from gmom_ppo.train import run

CONF = str(Path(__file__).parents[1] / "gmom_ppo" / "conf")


class BaselineAgent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.actor_mean = mlp(obs_dim, 64, act_dim, out_gain=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))
        self.critic = mlp(obs_dim, 64, 1, out_gain=1.0)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs)

    def action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        mean = self.actor_mean(obs)
        dist = Normal(mean, self.actor_logstd.expand_as(mean).exp())
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(1), dist.entropy().sum(1), self.critic(obs)


def baseline_env(env_id: str, gamma: float) -> gym.Env:
    env = gym.make(env_id)
    env = gym.wrappers.FlattenObservation(env)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = gym.wrappers.ClipAction(env)
    env = gym.wrappers.NormalizeObservation(env)
    env = gym.wrappers.TransformObservation(env, lambda o: np.clip(o, -10, 10), None)
    env = gym.wrappers.NormalizeReward(env, gamma=gamma)
    return gym.wrappers.TransformReward(env, lambda r: float(np.clip(r, -10, 10)))


def baseline(env_id: str, total_steps: int, seed: int) -> dict[str, float]:
    """The single-file loop: rollout, GAE, 10 × 32 clipped-PPO minibatch steps."""
    torch.manual_seed(seed)
    num_steps, epochs, minibatches, gamma = 2048, 10, 32, 0.99
    envs = gym.vector.SyncVectorEnv([lambda: baseline_env(env_id, gamma)])
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    agent = BaselineAgent(obs_dim, act_dim)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5)
    obs_buf = torch.zeros(num_steps, 1, obs_dim)
    act_buf = torch.zeros(num_steps, 1, act_dim)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros(num_steps, 1) for _ in range(4))
    next_obs = torch.tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
    next_done = torch.zeros(1)
    iterations = total_steps // num_steps
    rollout_time = update_time = 0.0
    start = time.perf_counter()
    for iteration in range(iterations):
        optimizer.param_groups[0]["lr"] = 3e-4 * (1.0 - iteration / iterations)
        t0 = time.perf_counter()
        for step in range(num_steps):
            obs_buf[step], done_buf[step] = next_obs, next_done
            with torch.no_grad():
                action, logp, _, value = agent.action_and_value(next_obs)
            act_buf[step], logp_buf[step], val_buf[step] = action, logp, value.flatten()
            obs, reward, term, trunc, _ = envs.step(action.numpy())
            rew_buf[step] = torch.tensor(reward, dtype=torch.float32)
            next_obs = torch.tensor(obs, dtype=torch.float32)
            next_done = torch.tensor(np.logical_or(term, trunc), dtype=torch.float32)
        t1 = time.perf_counter()
        with torch.no_grad():
            adv, ret = compute_gae(
                rew_buf, val_buf, done_buf, agent.value(next_obs).flatten(), next_done, gamma, 0.95
            )
        b_obs, b_act = obs_buf.reshape(-1, obs_dim), act_buf.reshape(-1, act_dim)
        b_logp, b_adv, b_ret, b_val = (t.reshape(-1) for t in (logp_buf, adv, ret, val_buf))
        size = num_steps // minibatches
        for _ in range(epochs):
            order = torch.randperm(num_steps)
            for begin in range(0, num_steps, size):
                idx = order[begin : begin + size]
                _, new_logp, entropy, new_value = agent.action_and_value(b_obs[idx], b_act[idx])
                ratio = (new_logp - b_logp[idx]).exp()
                mb_adv = (b_adv[idx] - b_adv[idx].mean()) / (b_adv[idx].std() + 1e-8)
                pg = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(0.8, 1.2)).mean()
                new_value = new_value.flatten()
                v_clip = b_val[idx] + (new_value - b_val[idx]).clamp(-0.2, 0.2)
                v_loss = (
                    0.5
                    * torch.max((new_value - b_ret[idx]) ** 2, (v_clip - b_ret[idx]) ** 2).mean()
                )
                loss = pg - 0.0 * entropy.mean() + 0.5 * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        rollout_time += t1 - t0
        update_time += time.perf_counter() - t1
    envs.close()
    steps = iterations * num_steps
    return {
        "steps_per_s": steps / (time.perf_counter() - start),
        "rollout_s": rollout_time / iterations,
        "update_s": update_time / iterations,
    }


def ours(env_id: str, total_steps: int, seed: int) -> dict[str, float]:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"env.id={env_id}",
                f"total_steps={total_steps}",
                f"seed={seed}",
                "device=cpu",  # the baseline runs on the CPU too
                "logging.progress=false",
                "logging.console_every=1000000",
                f"trainer.checkpoint_every={total_steps}",
            ],
        )
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run(cfg, Path(tmp))
        records = [r for r in read_metrics(Path(tmp) / "metrics.jsonl") if "iteration" in r]
    return {
        "steps_per_s": metrics["steps_per_s"],
        "rollout_s": float(np.mean([r["rollout_s"] for r in records])),
        "update_s": float(np.mean([r["update_s"] for r in records])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--steps", type=int, default=20480)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loops = {"single-file baseline": baseline, "gmom_ppo (algo=ppo)": ours}
    last: dict[str, dict[str, float]] = {}

    def timed(name: str):
        def call() -> None:
            last[name] = loops[name](args.env, args.steps, args.seed)

        return call

    seconds = best_seconds([timed(n) for n in loops], torch.device("cpu"), args.repeats)
    steps = args.steps // 2048 * 2048
    rates = {name: steps / s for name, s in zip(loops, seconds, strict=True)}
    reference = rates["single-file baseline"]
    print(f"{args.env}, {steps} steps, 1 env × 2048, torch threads=1, best of runs\n")
    print("| implementation | env steps/s | rollout s/iter | update s/iter | vs baseline |")
    print("|---|---|---|---|---|")
    for name, rate in rates.items():
        r = last[name]
        print(
            f"| {name} | {rate:,.0f} | {r['rollout_s']:.2f} | {r['update_s']:.2f} | "
            f"{rate / reference:.2f}× |"
        )


if __name__ == "__main__":
    main()
