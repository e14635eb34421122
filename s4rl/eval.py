"""Evaluate and summarise s4rl runs: frozen-weight rollouts, results table and plots.

    python -m s4rl.eval runs=runs/s4rl/small      # a sweep, or one run directory

For every run (a directory with config.yaml, metrics.jsonl and a checkpoint) the final weights
are rolled out on fresh episodes (`episodes` environments × `episodes_per_env` episodes in a
row, the memory carried through them as in training; greedy actions by default; meta_cartpole
gets `trials` trials per meta-episode, 32 as in the paper's evaluation; meta_dmc runs are rolled
out on the `dmc_split` tasks, the held-out ones by default) with the memory in its one-step mode.
Written next to the runs in `eval/`: results.md / results.json (per task and model, mean ±
sample std (ddof = 1) over seeds: final training return, evaluation return and success, env
steps/s), `<task>_returns.png` (training return vs env steps), `success_vs_memory_length.png`
(the memory-length study, §5.1) and `<task>_trials.png` (meta-RL: return of each trial of a
meta-episode vs the trial's index, §5.3); `figures=<dir>` copies the plots there too (the
README's). Runs of one model at several `ppo.lr` (a learning-rate sweep) get a row each.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import gymnasium
import hydra
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from common.checkpoint import latest_checkpoint, load_checkpoint
from common.logging import find_runs, read_metrics
from common.plotting import copy_figures, plot_curves, save
from common.stats import summarize
from s4rl.envs import make_env
from s4rl.train import build_agent

MODEL_ORDER = ("s5", "s5_noreset", "lstm", "gru", "transformer")


def eval_env(cfg: DictConfig, ecfg: DictConfig):
    """The run's task on `ecfg.episodes` environments with seeds unseen in training; meta_cartpole
    gets `ecfg.trials` trials, meta_dmc the `ecfg.dmc_split` tasks."""
    task = cfg.task.copy()
    with open_dict(task):
        if task.name == "meta_cartpole":
            task.trials = ecfg.trials
        if task.name == "meta_dmc":
            task.split = ecfg.dmc_split
    return make_env(task, ecfg.episodes, cfg.seed + 10_000)


@torch.no_grad()
def rollout(cfg: DictConfig, run_dir: Path, ecfg: DictConfig) -> dict:
    """Roll the run's final weights out on `ecfg.episodes` environments in parallel, each for
    `ecfg.episodes_per_env` episodes (meta-episodes) in a row; returns mean return, success
    (memory task) and the mean return per trial index (meta tasks)."""
    env = eval_env(cfg, ecfg)
    agent = build_agent(cfg, env)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to evaluate")
    load_checkpoint(checkpoint, models={"agent": agent}, restore_rng=False)
    agent.eval()
    torch.manual_seed(cfg.seed)
    state = agent.initial_state(ecfg.episodes)

    def act(obs: np.ndarray, reset: np.ndarray) -> np.ndarray:
        nonlocal state
        dist, _, state = agent.step(torch.as_tensor(obs), torch.as_tensor(reset), state)
        if ecfg.greedy:
            action = dist.probs.argmax(-1) if agent.discrete else dist.mean
        else:
            action = dist.sample()
        return action.numpy()

    return play(env, act, ecfg.episodes_per_env)


def random_policy(cfg: DictConfig, ecfg: DictConfig) -> dict:
    """The same evaluation with uniformly random actions: the floor a learned policy must clear."""
    env = eval_env(cfg, ecfg)
    rng = np.random.default_rng(cfg.seed)
    space = env.action_space

    def act(obs: np.ndarray, reset: np.ndarray) -> np.ndarray:
        if isinstance(space, gymnasium.spaces.Discrete):
            return rng.integers(0, space.n, len(obs))
        return rng.uniform(space.low, space.high, (len(obs), *space.shape)).astype(np.float32)

    return play(env, act, ecfg.episodes_per_env)


def play(env, act, repeats: int) -> dict:
    """Step every environment for `repeats` episodes in a row with `act(obs, reset)`."""
    episodes = env.num_envs
    obs = env.reset()
    reset = np.ones(episodes, dtype=bool)
    count = np.zeros(episodes, dtype=np.int64)
    returns, success = [], []
    trial_returns: dict[int, list[float]] = defaultdict(list)
    for _ in range((env.max_episode_steps + 1) * repeats):
        next_obs, _, done, info = env.step(act(obs, reset))
        live = count < repeats
        counted = done & live
        returns.extend(info["episode_return"][counted].tolist())
        if "success" in info:
            success.extend(info["success"][counted].tolist())
        if "trial_return" in info:
            ended = live & ~np.isnan(info["trial_return"])
            for index, value in zip(
                info["trial_index"][ended], info["trial_return"][ended], strict=True
            ):
                trial_returns[int(index)].append(float(value))
        count += done
        if (count >= repeats).all():
            break
        obs, reset = next_obs, done
    env.close()
    result = {"eval_return": float(np.mean(returns)), "eval_episodes": len(returns)}
    if success:
        result["eval_success"] = float(np.mean(success))
    if trial_returns:
        result["trial_returns"] = [float(np.mean(trial_returns[i])) for i in sorted(trial_returns)]
    return result


def load_run(run_dir: Path, ecfg: DictConfig) -> dict:
    """Training curve, final training return, speed and frozen-weight evaluation of one run."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "iteration" in r]
    if not records:
        raise ValueError(f"{run_dir} has no completed iteration in metrics.jsonl")
    curve = [(r["step"], r["episodic_return"]) for r in records if "episodic_return" in r]
    steps = np.array([s for s, _ in curve], dtype=float)
    values = np.array([v for _, v in curve], dtype=float)
    last = records[-1]["step"]
    tail = steps >= (1.0 - ecfg.final_fraction) * last
    run = {
        "dir": str(run_dir),
        "task": cfg.task.label,
        "model": cfg.model.label,
        "lr": cfg.ppo.lr,
        "seed": cfg.seed,
        "steps": last,
        "memory_length": cfg.task.get("memory_length"),
        "curve": (steps, values),
        "final_return": float(values[tail].mean()) if tail.any() else float("nan"),
        "steps_per_s": float(np.median([r["steps_per_s"] for r in records])),
    }
    run.update(rollout(cfg, run_dir, ecfg))
    return run


def _mean_std(values: list[float]) -> str:
    """mean ± sample std (ddof = 1) over seeds, the mean alone for one seed; "—" without values,
    "nan" if a seed has none (no episode ended in the final stretch)."""
    if not values:
        return "—"
    if np.isnan(values).any():
        return "nan"
    spread = summarize(values)
    return f"{spread.mean:.3f}" if spread.n == 1 else f"{spread.mean:.3f} ± {spread.std:.3f}"


def summarise(runs: list[dict], out_dir: Path, grid_points: int) -> str:
    """Write results.md/json and the plots; return the markdown table."""
    lrs = defaultdict(set)
    for r in runs:
        lrs[(r["task"], r["model"])].add(r["lr"])
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:  # a learning-rate sweep of one model shows one row per lr
        swept = len(lrs[(r["task"], r["model"])]) > 1
        groups[(r["task"], r["model"] + (f" (lr {r['lr']:g})" if swept else ""))].append(r)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}

    def sort_key(key):
        task, model = key
        length = groups[key][0]["memory_length"] or 0
        base = model.split(" ")[0]  # "lstm (lr 0.001)" sorts as lstm
        return (task.rstrip("0123456789"), length, task, order.get(base, 99), model)

    header = (
        "| task | model | seeds | steps | final train return | eval return | eval success "
        "| env steps/s |\n|---|---|---|---|---|---|---|---|"
    )
    lines, table = [header], {}
    for key in sorted(groups, key=sort_key):
        rs = groups[key]
        success = [r["eval_success"] for r in rs if "eval_success" in r]
        lines.append(
            f"| {key[0]} | {key[1]} | {len(rs)} | {max(r['steps'] for r in rs):,} | "
            f"{_mean_std([r['final_return'] for r in rs])} | "
            f"{_mean_std([r['eval_return'] for r in rs])} | {_mean_std(success)} | "
            f"{np.mean([r['steps_per_s'] for r in rs]):,.0f} |"
        )
        table[f"{key[0]}/{key[1]}"] = {
            "seeds": [r["seed"] for r in rs],
            "final_return": [r["final_return"] for r in rs],
            "eval_return": [r["eval_return"] for r in rs],
            "eval_success": success,
            "trial_returns": [r["trial_returns"] for r in rs if "trial_returns" in r],
            "steps_per_s": [r["steps_per_s"] for r in rs],
        }
    markdown = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(markdown + "\n")
    (out_dir / "results.json").write_text(json.dumps(table, indent=2))

    for task in sorted({t for t, _ in groups}):
        curves, grid = {}, None
        for (t, model), rs in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
            rs = [r for r in rs if len(r["curve"][0])]  # runs that finished an episode
            if t != task or not rs:
                continue
            end = min(r["steps"] for r in rs)
            grid = np.linspace(0, end, grid_points)
            curves[model] = np.stack([np.interp(grid, *r["curve"]) for r in rs])
        if not curves:
            continue
        plot_curves(
            curves,
            out_dir / f"{task}_returns.png",
            x=grid,
            xlabel="environment steps",
            ylabel="training episodic return",
            title=task,
        )

    memory = [r for r in runs if r["memory_length"] is not None and "eval_success" in r]
    if memory:
        fig, ax = plt.subplots(figsize=(6, 4))
        by_model = defaultdict(lambda: defaultdict(list))
        for r in memory:
            by_model[r["model"]][r["memory_length"]].append(r["eval_success"])
        for model in sorted(by_model, key=lambda m: order.get(m, 99)):
            lengths = sorted(by_model[model])
            means = [np.mean(by_model[model][n]) for n in lengths]
            stds = [summarize(by_model[model][n]).std for n in lengths]  # NaN: one seed
            ax.errorbar(lengths, means, yerr=stds, marker="o", capsize=3, label=model)
        ax.set_xscale("log")
        lengths = sorted({r["memory_length"] for r in memory})
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("memory length N")
        ax.set_ylabel("success (frozen weights, greedy)")
        ax.set_ylim(0.4, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, out_dir / "success_vs_memory_length.png")

    for task in sorted({r["task"] for r in runs if "trial_returns" in r}):
        curves = {
            model: np.array([r["trial_returns"] for r in rs])
            for (t, model), rs in groups.items()
            if t == task and all("trial_returns" in r for r in rs)
        }
        trials = next(iter(curves.values())).shape[1]
        plot_curves(
            curves,
            out_dir / f"{task}_trials.png",
            x=np.arange(1, trials + 1),
            xlabel="trial in the meta-episode",
            ylabel="trial return",
            title=task,
        )
    return markdown


def random_baselines(run_dirs: list[Path], ecfg: DictConfig) -> list[str]:
    """One line per meta-RL task among the runs: a uniformly random policy under the same
    evaluation (environments, seeds, trials, meta_dmc split) as the "eval return" column."""
    lines, seen = [], set()
    for run_dir in run_dirs:
        cfg = OmegaConf.load(run_dir / "config.yaml")
        if cfg.task.name not in ("meta_cartpole", "meta_dmc") or cfg.task.label in seen:
            continue
        seen.add(cfg.task.label)
        result = random_policy(cfg, ecfg)
        where = f"the {ecfg.dmc_split} tasks" if cfg.task.name == "meta_dmc" else "new projections"
        trials = result.get("trial_returns") if cfg.task.name == "meta_cartpole" else None
        per_trial = f"; per trial {np.mean(trials):.3f}" if trials else ""
        lines.append(
            f"random policy, {cfg.task.label} (eval on {where}): eval return "
            f"{result['eval_return']:.3f}{per_trial}"
        )
    return lines


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    root = Path(cfg.runs)
    run_dirs = find_runs(root)
    if not run_dirs:
        raise FileNotFoundError(f"no runs (config.yaml + metrics.jsonl) under {root}")
    torch.set_num_threads(cfg.threads)
    runs = [load_run(d, cfg) for d in run_dirs]
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    print(summarise(runs, out_dir, cfg.grid_points))
    baselines = random_baselines(run_dirs, cfg)
    if baselines:
        with open(out_dir / "results.md", "a") as results:
            results.write("\n" + "\n".join(baselines) + "\n")
        print("\n".join(baselines))
    print(f"[s4rl.eval] {len(runs)} runs; table, json and plots in {out_dir}")
    if cfg.figures:
        for path in copy_figures(sorted(out_dir.glob("*.png")), cfg.figures):
            print(f"[s4rl.eval] figure: {path}")


if __name__ == "__main__":
    main()
