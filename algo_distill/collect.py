"""Collect the source RL learning histories and the expert histories (Laskin et al. 2022, §4).

    python -m algo_distill.collect experiment=small            # Dark Room 5×5, ~1,000 histories
    python -m algo_distill.collect env=key_to_door experiment=paper

AD needs "learning histories": one source RL algorithm run from scratch per training task, every
transition logged in order across all of its episodes. The paper uses A3C; here the source is
tabular Q-learning with ε-greedy exploration (the issue allows any learner whose histories show
improvement), one Q-table per history, all histories stepped at once with array operations.
Expert Distillation (ED, §5 "Baselines") gets histories of the optimal policy on the same tasks.

Output (the run directory): `learning_XXXXX.npz` and `expert_XXXXX.npz` shards holding obs,
actions, rewards, dones (uint16/uint8/bool) of `shard_size` histories each, and `manifest.json`
(environment, the training / validation / test task sets, and per history: task, seed, return
of every episode).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from algo_distill.envs import ENVS, NUM_ACTIONS, DarkGridEnv, all_tasks, split_tasks
from common.config import check_choice, check_number, fail
from common.seeding import seed_everything

KINDS = ("learning", "expert")


def validate_env(env: DictConfig) -> None:
    """Checks shared by every stage: the environment and its task split."""
    check_choice(env, "name", "env.", ENVS)
    check_number(env, "size", "env.", integer=True, low=None)
    if env.size < 3 or env.size % 2 == 0:
        fail("env.size", env.size, "an odd integer >= 3 (Dark Room starts at the centre)")
    check_number(env, "episode_len", "env.", integer=True)
    num_tasks = len(all_tasks(env.name, env.size))
    check_number(
        env, "num_test_tasks", "env.", integer=True, low=1, high=num_tasks - 1, inclusive=True
    )
    check_number(
        env,
        "num_val_tasks",
        "env.",
        integer=True,
        low=1,
        high=num_tasks - env.num_test_tasks - 1,
        inclusive=True,
    )
    check_number(env, "max_train_tasks", "env.", integer=True)


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any work starts, naming the field and what is allowed."""
    validate_env(cfg.env)
    for key in ("num_histories", "history_episodes", "expert_episodes", "shard_size"):
        check_number(cfg, key, integer=True)
    source = cfg.source
    check_number(source, "alpha", "source.", low=None)
    if not 0.0 < source.alpha <= 1.0:
        fail("source.alpha", source.alpha, "a learning rate in (0, 1]")
    check_number(source, "gamma", "source.", low=None)
    if not 0.0 <= source.gamma < 1.0:
        fail("source.gamma", source.gamma, "a discount in [0, 1)")
    for key in ("epsilon_start", "epsilon_end"):
        check_number(source, key, "source.", high=1.0, inclusive=True)
    check_number(source, "epsilon_decay_episodes", "source.", integer=True)
    if not isinstance(source.backward_replay, bool):
        fail("source.backward_replay", source.backward_replay, "true or false")


def q_learning(
    env: DarkGridEnv, num_episodes: int, source: DictConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Run one tabular Q-learner per task copy of `env` from scratch, all at once.

    Q(s, a) ← Q(s, a) + α [r + γ max_a' Q(s', a') − Q(s, a)]   (no bootstrap at the episode end)
    with ε-greedy actions, ε decaying linearly per episode, and optimistic initial values
    `q_init`. With `source.backward_replay`, every episode's transitions are replayed once more
    in reverse order when it ends (episodic backward update): a reward found in this episode
    propagates back along the whole path at once instead of one step per visit, so the learner
    exploits a goal from the next episode on and its learning fits in a few episodes.
    The state s is (cell, reward phase of this episode): the phase comes from the learner's own
    rewards, so the Dark Room Hard / Key-to-Door learners stay Markov.
    Returns the history arrays (N, num_episodes · episode_len) and returns (N, num_episodes).
    """
    n, length = env.num_envs, env.episode_len
    q = np.full((n, env.num_obs * env.num_phases, NUM_ACTIONS), source.q_init, dtype=np.float64)
    rows = np.arange(n)
    history = _empty_history(n, num_episodes * length)
    returns = np.zeros((n, num_episodes), dtype=np.float32)
    for episode in range(num_episodes):
        fraction = min(1.0, episode / source.epsilon_decay_episodes)
        epsilon = source.epsilon_start + fraction * (source.epsilon_end - source.epsilon_start)
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        collected = np.zeros(n, dtype=np.int64)
        state = obs * env.num_phases
        transitions = []
        for t in range(length):
            greedy = (q[rows, state] + 1e-6 * rng.random((n, NUM_ACTIONS))).argmax(1)
            explore = rng.random(n) < epsilon
            action = np.where(explore, rng.integers(0, NUM_ACTIONS, n), greedy)
            next_obs, reward, _, truncated, _ = env.step(action)
            collected += reward.astype(np.int64)
            next_state = next_obs * env.num_phases + np.minimum(collected, env.num_phases - 1)
            transition = (state, action, reward, next_state, bool(truncated[0]))
            q_update(q, transition, source)
            transitions.append(transition)
            _record(history, episode * length + t, obs, action, reward, truncated)
            returns[:, episode] += reward
            obs, state = next_obs, next_state
        if source.backward_replay:
            for transition in reversed(transitions):
                q_update(q, transition, source)
    return {**history, "returns": returns}


def q_update(q: np.ndarray, transition: tuple, source: DictConfig) -> None:
    """One Q-learning step for every learner: Q(s, a) += α [r + γ max_a' Q(s', a') − Q(s, a)]."""
    state, action, reward, next_state, last = transition
    rows = np.arange(len(q))
    bootstrap = 0.0 if last else source.gamma * q[rows, next_state].max(1)
    q[rows, state, action] += source.alpha * (reward + bootstrap - q[rows, state, action])


def expert_rollouts(
    env: DarkGridEnv, num_episodes: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Histories of the optimal policy (`DarkGridEnv.expert_actions`), the data of ED."""
    n, length = env.num_envs, env.episode_len
    history = _empty_history(n, num_episodes * length)
    returns = np.zeros((n, num_episodes), dtype=np.float32)
    for episode in range(num_episodes):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        for t in range(length):
            action = env.expert_actions(rng)
            next_obs, reward, _, truncated, _ = env.step(action)
            _record(history, episode * length + t, obs, action, reward, truncated)
            returns[:, episode] += reward
            obs = next_obs
    return {**history, "returns": returns}


def _empty_history(n: int, steps: int) -> dict[str, np.ndarray]:
    return {
        "obs": np.zeros((n, steps), dtype=np.uint16),
        "actions": np.zeros((n, steps), dtype=np.uint8),
        "rewards": np.zeros((n, steps), dtype=np.uint8),
        "dones": np.zeros((n, steps), dtype=bool),
    }


def _record(history: dict, t: int, obs, action, reward, done) -> None:
    history["obs"][:, t] = obs
    history["actions"][:, t] = action
    history["rewards"][:, t] = reward
    history["dones"][:, t] = done


def make_env(env_cfg: DictConfig, tasks: np.ndarray) -> DarkGridEnv:
    return DarkGridEnv(env_cfg.name, tasks, env_cfg.size, env_cfg.episode_len)


def task_split(env_cfg: DictConfig) -> dict[str, np.ndarray]:
    return split_tasks(
        env_cfg.name,
        env_cfg.size,
        env_cfg.num_test_tasks,
        env_cfg.num_val_tasks,
        env_cfg.max_train_tasks,
        env_cfg.seed,
    )


def run(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Collect both datasets into `out`; returns the manifest."""
    validate(cfg)
    seed_everything(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    split = task_split(cfg.env)
    train_tasks = split["train"]
    # histories go round-robin over the training tasks: history i learns task i mod #tasks
    tasks = train_tasks[np.arange(cfg.num_histories) % len(train_tasks)]
    seeds = cfg.seed * 1_000_000 + np.arange(cfg.num_histories)
    manifest: dict[str, Any] = {
        "env": OmegaConf.to_container(cfg.env),
        **{f"{name}_tasks": chosen.tolist() for name, chosen in split.items()},
        "shards": {kind: [] for kind in KINDS},
        "histories": {kind: [] for kind in KINDS},
        "steps_per_s": {},
    }
    episodes = {"learning": cfg.history_episodes, "expert": cfg.expert_episodes}
    starts = range(0, cfg.num_histories, cfg.shard_size)
    for kind in KINDS:
        clock, steps = time.perf_counter(), 0
        for shard, begin in enumerate(
            tqdm(starts, desc=f"collect {kind}", disable=not cfg.progress)
        ):
            index = slice(begin, begin + cfg.shard_size)
            rng = np.random.default_rng([cfg.seed, KINDS.index(kind), shard])
            env = make_env(cfg.env, tasks[index])
            if kind == "learning":
                data = q_learning(env, episodes[kind], cfg.source, rng)
            else:
                data = expert_rollouts(env, episodes[kind], rng)
            name = f"{kind}_{shard:05d}.npz"
            np.savez_compressed(out / name, tasks=tasks[index], seeds=seeds[index], **data)
            manifest["shards"][kind].append(name)
            steps += data["obs"].size
            for task, seed, ret in zip(tasks[index], seeds[index], data["returns"], strict=True):
                manifest["histories"][kind].append(
                    {"task": task.tolist(), "seed": int(seed), "returns": ret.tolist()}
                )
        manifest["steps_per_s"][kind] = steps / (time.perf_counter() - clock)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@hydra.main(version_base="1.3", config_path="conf", config_name="collect")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    manifest = run(cfg, out)
    learning = np.array([h["returns"] for h in manifest["histories"]["learning"]])
    expert = np.array([h["returns"] for h in manifest["histories"]["expert"]])
    print(
        f"[algo_distill] {out}: {len(learning)} learning histories, return first/last episode "
        f"{learning[:, 0].mean():.2f} -> {learning[:, -1].mean():.2f}; expert "
        f"{expert.mean():.2f}; source {manifest['steps_per_s']['learning']:.0f} env steps/s"
    )


if __name__ == "__main__":
    main()
