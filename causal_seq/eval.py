"""Evaluate trained policies with frozen weights against the exact Bayesian references.

    python -m causal_seq.eval runs=runs/causal_seq/multirun/<date>     # a sweep, or one run

For every run found under `runs`, loads the latest checkpoint and rolls out, on the same latents
and sampling seed: the expert (knows θ), exact posterior sampling (Thompson sampling / the
Bayesian control rule: the target of counterfactual teaching) and each trained model. Reports,
mean ± sample std (ddof = 1, `common.stats`) over seeds: the probability of an optimal action
late in the episode, cumulative regret against the expert, and the distance of each model's
action distribution from the posterior-sampling policy computed with the do-posterior and with
the conditioning posterior (§3–4 of the report). Writes results.md / results.json and plots
next to the runs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from causal_seq.data import Trajectory, rollout, sample_theta, token_dim
from causal_seq.model import build_model
from causal_seq.train import build_task, model_config
from common.checkpoint import latest_checkpoint, load_checkpoint
from common.logging import find_runs
from common.plotting import copy_figures, plot_curves, save
from common.stats import summarize

EXPERT, POSTERIOR = "expert (knows θ)", "Thompson sampling (exact posterior)"


def summarise(traj: Trajectory, expert: Trajectory, late_steps: int) -> dict:
    """Scalar metrics and per-step curves (averaged over episodes) of one policy."""
    rows = torch.arange(len(traj.theta))
    regret = (expert.mean_rewards - traj.mean_rewards).cumsum(1)
    tv_do = 0.5 * (traj.policy_probs - traj.predictive_do).abs().sum(-1)
    tv_cond = 0.5 * (traj.policy_probs - traj.predictive_cond).abs().sum(-1)
    curves = {
        "optimal": traj.optimal.mean(0),
        "regret": regret.mean(0),
        "tv_do": tv_do.mean(0),
        "tv_cond": tv_cond.nanmean(0),
        "belief_model": traj.policy_probs[rows, :, traj.theta].mean(0),
        "belief_do": traj.posterior_do[rows, :, traj.theta].mean(0),
        "belief_cond": traj.posterior_cond[rows, :, traj.theta].nanmean(0),
    }
    return {
        "late_optimal": traj.optimal[:, -late_steps:].mean().item(),
        "regret": regret[:, -1].mean().item(),
        "return": traj.mean_rewards.sum(1).mean().item(),
        "tv_do": tv_do.mean().item(),
        "tv_cond": tv_cond.nanmean().item(),
        "curves": {k: v.tolist() for k, v in curves.items()},
    }


@torch.no_grad()
def evaluate_run(run_dir: Path, episodes: int, seed: int, late_fraction: float) -> dict:
    """Roll out every policy of one run on the same evaluation latents; writes eval.json."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    task = build_task(cfg.task)
    models = {
        mode: build_model(token_dim(task), task.num_actions, model_config(cfg.model))
        for mode in cfg.teaching
    }
    checkpoint = latest_checkpoint(run_dir)
    step, _ = load_checkpoint(checkpoint, models=models, restore_rng=False)
    late_steps = max(1, round(task.horizon * late_fraction))

    def play(policy) -> Trajectory:
        # same latents and sampling stream for every policy of a run; new ones for every seed
        generator = torch.Generator().manual_seed(seed + cfg.seed)
        theta = sample_theta(task, episodes, generator)
        return rollout(task, policy, theta, generator)

    expert = play("expert")
    policies = {EXPERT: expert, POSTERIOR: play("posterior")}
    for mode, model in models.items():
        policies[f"{cfg.model.name} {mode}"] = play(model.eval())
    result = {
        "run": str(run_dir),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "checkpoint_step": step,
        "policies": {name: summarise(t, expert, late_steps) for name, t in policies.items()},
    }
    (run_dir / "eval.json").write_text(json.dumps(result))
    return result


def aggregate(results: list[dict]) -> dict[str, dict[str, dict]]:
    """task -> policy -> {metric: (mean, sample std), seeds, curves (seeds, T)} over seeds; a
    seed whose metric is NaN (undefined) is left out of it, std is NaN for fewer than 2 seeds.

    The reference policies depend only on the task and seed, so each counts once per seed."""
    seen: set[tuple] = set()
    grouped: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        for name, summary in result["policies"].items():
            key = (result["task"], name, result["seed"])
            if key in seen:
                continue
            seen.add(key)
            grouped[result["task"]][name].append(summary)
    table: dict[str, dict[str, dict]] = {}
    for task, policies in grouped.items():
        table[task] = {}
        for name, summaries in policies.items():
            entry = {"seeds": len(summaries)}
            for metric in ("late_optimal", "regret", "return", "tv_do", "tv_cond"):
                values = [s[metric] for s in summaries if not np.isnan(s[metric])]
                spread = summarize(values) if values else None
                entry[metric] = (spread.mean, spread.std) if spread else (np.nan, np.nan)
            entry["curves"] = {
                k: np.array([s["curves"][k] for s in summaries]) for k in summaries[0]["curves"]
            }
            table[task][name] = entry
    return table


def _order(name: str) -> tuple:
    return (name != EXPERT, name != POSTERIOR, "factual" in name and "counter" not in name, name)


def results_markdown(table: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| task | policy | P(optimal action), late | cumulative regret | "
        "TV to posterior sampling (do) | TV to conditioning posterior | seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(entry: dict, metric: str, references: bool) -> str:
        mean, std = entry[metric]
        if references or np.isnan(mean):
            return "—"
        return f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f} ± {std:.3f}"

    for task in sorted(table):
        for name in sorted(table[task], key=_order):
            entry = table[task][name]
            ref = name in (EXPERT, POSTERIOR)
            lines.append(
                f"| {task} | {name} | {cell(entry, 'late_optimal', False)} | "
                f"{cell(entry, 'regret', False)} | {cell(entry, 'tv_do', ref)} | "
                f"{cell(entry, 'tv_cond', ref)} | {entry['seeds']} |"
            )
    return "\n".join(lines)


def make_plots(table: dict[str, dict[str, dict]], out: Path) -> list[Path]:
    paths = []
    for task, policies in table.items():
        ordered = sorted(policies, key=_order)
        for key, label in (("optimal", "P(optimal action)"), ("regret", "cumulative regret")):
            curves = {name: policies[name]["curves"][key] for name in ordered}
            paths.append(
                plot_curves(
                    curves,
                    out / f"{task}_{key}.png",
                    xlabel="step in episode",
                    ylabel=label,
                    title=f"{task}: factual vs counterfactual teaching",
                )
            )
        models = [n for n in ordered if n not in (EXPERT, POSTERIOR)]
        fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
        for ax, name in zip(axes[0], models, strict=True):
            curves = policies[name]["curves"]
            if task == "bandit":  # the expert is one-hot on θ: action probabilities = belief
                shown = {
                    "model P(θ = true arm)": curves["belief_model"],
                    "exact do-posterior": curves["belief_do"],
                    "exact conditioning posterior (where defined)": curves["belief_cond"],
                }
                ylabel = "belief in the true θ"
            else:
                shown = {
                    "TV(model, do-posterior policy)": curves["tv_do"],
                    "TV(model, conditioning policy), where defined": curves["tv_cond"],
                }
                ylabel = "total variation"
            plot_curves(shown, "", xlabel="step in episode", ylabel=ylabel, title=name, ax=ax)
        paths.append(save(fig, out / f"{task}_belief.png"))
    return paths


def evaluate(root: Path, out: Path, episodes: int, seed: int, late_fraction: float) -> dict:
    runs = [r for r in find_runs(root) if latest_checkpoint(r) is not None]
    if not runs:
        raise FileNotFoundError(f"no run with a checkpoint under {root}")
    results = [
        evaluate_run(r, episodes, seed, late_fraction) for r in tqdm(runs, desc="evaluating runs")
    ]
    table = aggregate(results)
    out.mkdir(parents=True, exist_ok=True)
    markdown = results_markdown(table)
    (out / "results.md").write_text(markdown + "\n")
    serialisable = {
        task: {
            name: {k: v for k, v in entry.items() if k != "curves"}
            for name, entry in policies.items()
        }
        for task, policies in table.items()
    }
    (out / "results.json").write_text(json.dumps(serialisable, indent=1))
    plots = make_plots(table, out)
    return {"markdown": markdown, "plots": plots, "table": table, "runs": runs}


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    report = evaluate(Path(cfg.runs), out, cfg.episodes, cfg.seed, cfg.late_fraction)
    print(f"\ncausal_seq results ({len(report['runs'])} runs, {cfg.episodes} episodes each)\n")
    print(report["markdown"])
    print(f"\ntable: {out / 'results.md'}")
    for path in report["plots"]:
        print(f"plot:  {path}")
    if cfg.figures:
        for path in copy_figures(report["plots"], cfg.figures):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
