"""Trajectory data for TDMs (Schubert et al. 2023, §5.1): episodes from diverse policies per task
so the data covers the state space — uniform random actions, and the true-simulator MPC expert
(this package's planner rolling candidates through the real physics) with Gaussian action noise
of several scales. Stored per task as a Minari dataset (HDF5), with a manifest holding every
episode's policy, the per-task expert and random scores and the train / val / test episode split.

    python -m tdm.collect task=cartpole-swingup experiment=small
    python -m tdm.collect task=family experiment=small      # every body of the cartpole family
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.config import check_number, fail
from common.seeding import seed_everything
from tdm.envs import TASKS, family_split, make_env
from tdm.planners import Planner
from tdm.planners import check_config as check_planner

FAMILY = "family"


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any work starts, naming the field."""
    if cfg.task != FAMILY and cfg.task not in TASKS:
        fail("task", cfg.task, f"one of {TASKS} or {FAMILY!r}")
    check_number(cfg, "seed", low=None, integer=True)
    check_number(cfg, "env_seed", low=None, integer=True)
    check_number(cfg.episodes, "random", "episodes.", integer=True, low=0, inclusive=True)
    check_number(cfg.episodes, "expert", "episodes.", integer=True)
    if not cfg.noise_levels:
        fail("noise_levels", list(cfg.noise_levels), "a non-empty list of action-noise stds")
    for i in range(len(cfg.noise_levels)):
        check_number(cfg.noise_levels, i, "noise_levels.", low=0.0, inclusive=True)
    for key in ("val", "test"):
        check_number(cfg.split, key, "split.", low=0.0, high=0.5)
    check_planner(cfg.expert, "expert.")
    if cfg.action_repeat is not None:
        check_number(cfg, "action_repeat", integer=True)


def tasks_of(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(tasks to collect, held-out bodies): the family's held-out split is fixed by env_seed."""
    if cfg.task == FAMILY:
        train, heldout = family_split(cfg.env_seed)
        return train + heldout, heldout
    return [cfg.task], []


def true_score(env):
    """The planner's score with the real simulator: total reward of each candidate from the
    current state."""

    def score(actions: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(env.simulate(env.get_state(), actions.numpy()).sum(1))

    return score


def run_episode(env, policy, rng: np.random.Generator, noise: float) -> dict[str, np.ndarray]:
    """One episode; `policy(obs) -> action` (None: uniform random), plus N(0, noise²) noise."""
    obs = [env.reset()]
    actions, rewards = [], []
    for _ in range(env.episode_len):
        if policy is None:
            action = rng.uniform(-1, 1, env.act_dim)
        else:
            action = policy(obs[-1]) + noise * rng.standard_normal(env.act_dim)
        action = np.clip(action, -1, 1).astype(np.float32)
        o, r, done = env.step(action)
        obs.append(o)
        actions.append(action)
        rewards.append(r)
        if done:
            break
    return {
        "observations": np.stack(obs).astype(np.float32),
        "actions": np.stack(actions),
        "rewards": np.asarray(rewards, np.float32),
    }


def write_minari(path: Path, task: str, episodes: list[dict], env, scores: dict) -> None:
    """One Minari dataset `tdm/<task>/mixed-v0` under `path` (MINARI_DATASETS_PATH)."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    os.environ["MINARI_DATASETS_PATH"] = str(path)
    shutil.rmtree(path / "tdm" / task, ignore_errors=True)  # left by an interrupted run
    buffers = []
    for i, ep in enumerate(episodes):
        t = len(ep["rewards"])
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=ep["observations"],
                actions=ep["actions"],
                rewards=list(ep["rewards"]),
                terminations=[False] * t,
                truncations=[False] * (t - 1) + [True],
                infos={},
            )
        )
    with warnings.catch_warnings():  # Minari's advice to add a URL / e-mail / eval env
        warnings.simplefilter("ignore", UserWarning)
        minari.create_dataset_from_buffers(
            f"tdm/{task}/mixed-v0",
            buffers,
            observation_space=gym.spaces.Box(-np.inf, np.inf, (env.obs_dim,), np.float32),
            action_space=gym.spaces.Box(-1.0, 1.0, (env.act_dim,), np.float32),
            ref_min_score=scores["random"],
            ref_max_score=scores["expert"],
            algorithm_name="random + true-simulator MPC with action noise",
            author="seqcontrol",
            description=f"tdm.collect: {task}, action repeat {env.action_repeat}",
        )


def split_episodes(meta: list[dict], rng: np.random.Generator, val: float, test: float) -> dict:
    """Episode ids → train / val / test (at least one each), fixed by the seed and stratified:
    the episodes of every policy (random, expert at each noise level) are spread evenly over the
    order the splits are cut from, so each split sees every kind of policy it has room for. Ids
    stay in that order: the first k train episodes (few-shot `shots=k`) mix the policies too."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(meta):
        groups.setdefault((m["policy"], m["noise"]), []).append(i)
    keys = {}
    for ids in groups.values():
        for rank, i in enumerate(rng.permutation(ids)):
            keys[int(i)] = (rank + rng.uniform()) / len(ids)
    order = sorted(keys, key=keys.get)
    n = len(order)
    n_val, n_test = max(1, round(val * n)), max(1, round(test * n))
    return {
        "val": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }


def collect_task(cfg: DictConfig, task: str, out: Path, index: int) -> dict:
    seed = cfg.seed * 1000 + index
    env = make_env(task, seed, cfg.action_repeat)
    rng = np.random.default_rng(seed)
    planner = Planner.from_config(cfg.expert, env.act_dim, seed)
    score = true_score(env)

    def expert(_obs):
        return planner.act(score)

    kinds = [("random", 0.0)] * cfg.episodes.random
    kinds += [
        ("expert", cfg.noise_levels[i % len(cfg.noise_levels)]) for i in range(cfg.episodes.expert)
    ]
    episodes, meta = [], []
    for kind, noise in tqdm(kinds, desc=task, disable=not cfg.progress):
        planner.reset()
        t0 = time.perf_counter()
        ep = run_episode(env, None if kind == "random" else expert, rng, noise)
        episodes.append(ep)
        meta.append(
            {
                "policy": kind,
                "noise": noise,
                "return": float(ep["rewards"].sum()),
                "seconds": time.perf_counter() - t0,
            }
        )
    returns = {
        k: [m["return"] for m in meta if (m["policy"], m["noise"]) == k]
        for k in {(m["policy"], m["noise"]) for m in meta}
    }
    expert_returns = returns.get(("expert", min(cfg.noise_levels)), [])
    scores = {
        "random": float(np.mean(returns.get(("random", 0.0), [np.nan]))),
        "expert": float(np.mean(expert_returns)) if expert_returns else float("nan"),
    }
    write_minari(out / "minari", task, episodes, env, scores)
    return {
        "task": task,
        "obs_dim": env.obs_dim,
        "act_dim": env.act_dim,
        "action_repeat": env.action_repeat,
        "episode_len": env.episode_len,
        "scores": scores,
        "episodes": meta,
        "split": split_episodes(meta, rng, cfg.split.val, cfg.split.test),
    }


def run(cfg: DictConfig, out: Path) -> dict:
    validate(cfg)
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    tasks, heldout = tasks_of(cfg)
    manifest_path = out / "manifest.json"
    manifest = (
        json.loads(manifest_path.read_text())
        if manifest_path.is_file()
        else {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "heldout": heldout,
            "tasks": {},
        }
    )
    for i, task in enumerate(tasks):
        if task in manifest["tasks"]:  # done in an earlier, interrupted run of this command
            continue
        manifest["tasks"][task] = collect_task(cfg, task, out, i)
        s = manifest["tasks"][task]["scores"]
        print(f"{task}: expert {s['expert']:.1f}, random {s['random']:.1f}")
        manifest_path.write_text(json.dumps(manifest, indent=1))
    print(f"dataset: {out}")
    return manifest


@hydra.main(version_base="1.3", config_path="conf", config_name="collect")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
