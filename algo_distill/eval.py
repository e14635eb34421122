"""Evaluate AD and ED in context with frozen weights on held-out tasks (Laskin et al. 2022, §5).

    python -m algo_distill.eval runs=runs/algo_distill/multirun/<date>     # a sweep, or one run
    python -m algo_distill.eval runs=<sweep> split=val       # the validation tasks, for choices

For every training run under `runs`: load the latest checkpoint, roll the model out on
`copies` copies of every task of the dataset's `split` (test by default: tasks no training
run and no choice has seen) for `episodes` episodes in a row (its own
history as context, sliding window, KV cache), and record the mean return per episode. Against
it: the source algorithm (tabular Q-learning, from scratch, one run per training seed) on the
same tasks, and the optimal policy. Also times in-context decoding with the KV cache against
recomputing the full context every step, and checks that both choose the same actions.
Writes results.md / results.json and plots (return vs episode, return vs environment steps).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from algo_distill.collect import expert_rollouts, q_learning
from algo_distill.data import load_manifest
from algo_distill.model import AlgorithmDistillationTransformer, build_model
from algo_distill.rollout import in_context_rollout
from algo_distill.train import eval_env
from common.checkpoint import latest_checkpoint, load_checkpoint
from common.config import check_choice, check_number
from common.logging import find_runs
from common.plotting import plot_curves, save
from common.stats import Summary, format_summary, summarize

SOURCE, OPTIMAL = "source Q-learning", "optimal policy"
LABELS = {"algorithm_distillation": "AD", "expert_distillation": "ED"}


def load_run(run_dir: Path) -> tuple[DictConfig, AlgorithmDistillationTransformer, int]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model = build_model(OmegaConf.to_container(cfg.model), cfg.env, cfg.context_episodes)
    step, _ = load_checkpoint(
        latest_checkpoint(run_dir), models={"model": model}, restore_rng=False
    )
    return cfg, model.eval(), step


def label(cfg: DictConfig) -> str:
    """Table / plot name of a run: AD, ED, or AD on subsampled histories."""
    every = cfg.get("subsample_every", 1)
    if every == 1:
        return LABELS[cfg.method]
    nth = {2: "2nd", 3: "3rd"}.get(every, f"{every}th")
    return f"{LABELS[cfg.method]} (every {nth} episode)"


def evaluate_run(run_dir: Path, episodes: int, copies: int, seed: int, split: str) -> dict:
    """Per-episode mean return of one frozen model on its dataset's `split` tasks."""
    cfg, model, step = load_run(run_dir)
    env = eval_env(load_manifest(cfg.dataset), copies, split)
    clock = time.perf_counter()
    returns = in_context_rollout(model, env, episodes, seed=seed + cfg.seed)
    seconds = time.perf_counter() - clock
    result = {
        "run": str(run_dir),
        "method": cfg.method,
        "label": label(cfg),
        "seed": cfg.seed,
        "dataset": str(cfg.dataset),
        "checkpoint_step": step,
        "curve": returns.mean(0).tolist(),
        "episodes_per_s": returns.size / seconds,
    }
    (run_dir / f"eval_{split}.json").write_text(json.dumps(result))
    return result


def source_curves(
    dataset: str, episodes: int, copies: int, seeds: list[int], split: str
) -> np.ndarray:
    """(seeds, episodes) mean return of the source algorithm learning the `split` tasks."""
    manifest = load_manifest(dataset)
    source = OmegaConf.load(Path(dataset) / "config.yaml").source
    curves = []
    for seed in seeds:
        env = eval_env(manifest, copies, split)
        data = q_learning(env, episodes, source, np.random.default_rng([seed, 7]))
        curves.append(data["returns"].mean(0))
    return np.stack(curves)


def optimal_return(dataset: str, copies: int, seed: int, split: str) -> float:
    """Mean return of the optimal policy on the `split` tasks."""
    env = eval_env(load_manifest(dataset), copies, split)
    return float(expert_rollouts(env, 1, np.random.default_rng(seed))["returns"].mean())


def kv_cache_speed(run_dir: Path, episodes: int, copies: int, seed: int, split: str) -> dict:
    """Episodes/s of in-context evaluation with the KV cache vs recomputing the full history
    every step (same window mask), and whether both took the same actions."""
    cfg, model, _ = load_run(run_dir)
    manifest = load_manifest(cfg.dataset)
    result = {}
    for mode in ("kv_cache", "full_context"):
        env = eval_env(manifest, copies, split)
        clock = time.perf_counter()
        returns = in_context_rollout(model, env, episodes, seed=seed, mode=mode)
        result[mode] = {"episodes_per_s": returns.size / (time.perf_counter() - clock)}
        result[mode]["returns"] = returns.tolist()
    result["same_returns"] = result["kv_cache"]["returns"] == result["full_context"]["returns"]
    result["ratio"] = (
        result["kv_cache"]["episodes_per_s"] / result["full_context"]["episodes_per_s"]
    )
    result["episodes"], result["batch"] = episodes, env.num_envs
    return result


def summarise(curves: np.ndarray, optimal: float, episode_len: int) -> dict:
    """Per-seed numbers of one policy, each as `common.stats.summarize` (mean, sample std,
    n, 95% t-interval): first-episode return, mean return of the last 5 episodes, that as a
    fraction of optimal, and the environment steps until the curve first reaches 80% of
    optimal (seeds that never reach it are counted, not averaged)."""
    last = curves[:, -5:].mean(1)
    reached = curves >= 0.8 * optimal
    steps = [(row.argmax() + 1) * episode_len for row in reached if row.any()]
    return {
        "first": summarize(curves[:, 0]),
        "last5": summarize(last),
        "fraction_of_optimal": summarize(last / optimal),
        "steps_to_80": summarize(steps) if steps else None,
        "reached_80": f"{len(steps)}/{len(curves)}",
    }


def results_markdown(table: dict[str, dict], optimal: float, split: str) -> str:
    lines = [
        f"{split} tasks; optimal return {optimal:.2f}; mean ± sample std (n seeds; 95% t-interval)",
        "",
        "| policy | return, episode 1 | return, last 5 episodes | fraction of optimal "
        "| env steps to 80% of optimal (seeds reaching it) |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        steps = row["steps_to_80"]
        reach = f"{format_summary(steps, 0)} ({row['reached_80']})" if steps else "never (0)"
        cells = [format_summary(row[k]) for k in ("first", "last5", "fraction_of_optimal")]
        lines.append(f"| {name} | {' | '.join(cells)} | {reach} |")
    return "\n".join(lines)


def make_plots(
    curves: dict[str, np.ndarray], optimal: float, episode_len: int, split: str, out: Path
) -> list[Path]:
    """Return vs episode (in-context episodes for AD/ED, learning episodes for the source) and
    return vs environment steps, mean ± sample std over seeds (`plot_curves`)."""
    episodes = max(c.shape[1] for c in curves.values())
    shown = {**curves, OPTIMAL: np.full((1, episodes), optimal)}
    paths = []
    for name, unit, scale in (
        ("return_vs_episode", "episode", 1),
        ("return_vs_steps", "environment steps", episode_len),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, values in shown.items():
            x = (np.arange(values.shape[1]) + 1) * scale
            plot_curves({label: values}, "", x=x, xlabel=unit, ylabel="return per episode", ax=ax)
        ax.set_title(f"{split} tasks, frozen weights (AD / ED) vs the source learner", fontsize=9)
        paths.append(save(fig, out / f"{name}.png"))
    return paths


def evaluate(root: Path, out: Path, cfg: DictConfig) -> dict:
    runs = [r for r in find_runs(root) if latest_checkpoint(r) is not None]
    if not runs:
        raise FileNotFoundError(f"no training run with a checkpoint under {root}")
    results = [
        evaluate_run(r, cfg.episodes, cfg.copies, cfg.seed, cfg.split)
        for r in tqdm(runs, desc=f"in-context eval ({cfg.split} tasks)")
    ]
    datasets = sorted({r["dataset"] for r in results})
    if len(datasets) != 1:
        raise ValueError(
            f"runs under {root} use {len(datasets)} datasets ({datasets}); evaluate one at a time"
        )
    dataset = datasets[0]
    grouped = defaultdict(list)
    for r in results:
        grouped[r["label"]].append(r["curve"])
    curves = {name: np.array(c) for name, c in sorted(grouped.items())}
    seeds = sorted({r["seed"] for r in results})
    source_episodes = max(cfg.episodes, cfg.source_episodes)
    curves[SOURCE] = source_curves(
        dataset, source_episodes, cfg.copies, [cfg.seed + s for s in seeds], cfg.split
    )
    optimal = optimal_return(dataset, cfg.copies, cfg.seed, cfg.split)
    episode_len = load_manifest(dataset)["env"]["episode_len"]
    table = {
        name: summarise(c[:, : cfg.episodes], optimal, episode_len) for name, c in curves.items()
    }
    speed = kv_cache_speed(runs[0], cfg.speed_episodes, cfg.copies, cfg.seed, cfg.split)
    out.mkdir(parents=True, exist_ok=True)
    markdown = results_markdown(table, optimal, cfg.split)
    speed_line = (
        f"in-context evaluation, {speed['batch']} rollouts × {speed['episodes']} episodes: "
        f"KV cache {speed['kv_cache']['episodes_per_s']:.1f} episodes/s, full-context recompute "
        f"{speed['full_context']['episodes_per_s']:.1f} episodes/s (ratio {speed['ratio']:.1f}×, "
        f"same returns: {speed['same_returns']})"
    )
    (out / "results.md").write_text(markdown + "\n\n" + speed_line + "\n")
    record = {
        "dataset": dataset,
        "split": cfg.split,
        "optimal": optimal,
        "table": {
            name: {k: asdict(v) if isinstance(v, Summary) else v for k, v in row.items()}
            for name, row in table.items()
        },
        "curves": {k: v.tolist() for k, v in curves.items()},
        "eval_episodes_per_s": {r["run"]: r["episodes_per_s"] for r in results},
        "kv_cache_speed": {k: v for k, v in speed.items() if k not in ("kv_cache", "full_context")}
        | {m: speed[m]["episodes_per_s"] for m in ("kv_cache", "full_context")},
    }
    (out / "results.json").write_text(json.dumps(record, indent=1))
    plots = make_plots(curves, optimal, episode_len, cfg.split, out)
    if cfg.figures:
        plots += make_plots(curves, optimal, episode_len, cfg.split, Path(cfg.figures))
    return {
        "markdown": markdown,
        "speed": speed_line,
        "plots": plots,
        "table": table,
        "curves": curves,
        "runs": runs,
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    for key in ("episodes", "copies", "speed_episodes"):
        check_number(cfg, key, integer=True)
    check_choice(cfg, "split", "", ("val", "test"))
    out = Path(HydraConfig.get().runtime.output_dir)
    report = evaluate(Path(cfg.runs), out, cfg)
    print(
        f"\nalgo_distill results ({len(report['runs'])} runs, {cfg.episodes} episodes in context, "
        f"{cfg.split} tasks)\n"
    )
    print(report["markdown"])
    print(report["speed"])
    print(f"\ntable: {out / 'results.md'}")
    for path in report["plots"]:
        print(f"plot:  {path}")


if __name__ == "__main__":
    main()
