"""Summarise gmom_ppo runs: returns of PPO / PPO-no-clip / GMOM and the kurtosis study.

    python -m gmom_ppo.eval runs=runs/gmom_ppo/small     # a sweep, or one run

Reads each run's metrics.jsonl (training episodic returns, as CleanRL reports them, and the
kurtosis probes of `diagnostics.enabled=true`) and writes, next to the runs in `eval/`:
results.md / results.json (final return mean ± sample std (ddof = 1) over seeds, steps/s,
kurtosis at the first and last epoch of an update), returns.png, kurtosis_vs_step.png (probes
at the start of an update, Garg et al. Fig. 1–2) and kurtosis_vs_epoch.png (median over probed
updates of the probe at each epoch, the off-policy axis of Fig. 3).
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from common.logging import find_runs, read_metrics
from common.plotting import copy_figures, plot_curves, save
from common.stats import summarize

KURTOSIS = (
    "kurtosis/actor_grad_norm",
    "kurtosis/actor_grad_coord",
    "kurtosis/critic_grad_norm",
    "kurtosis/critic_grad_coord",
    "kurtosis/ratio",
    "kurtosis/advantage",
)
ORDER = ("ppo", "ppo_noclip", "gmom")
STEP_EPOCH = {"kurtosis/ratio": -1}  # epoch shown vs training step (default 0: update start)


def load_run(run_dir: Path, final_fraction: float) -> dict:
    """Return curve, final return, speed and kurtosis probes of one run."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    records = read_metrics(run_dir / "metrics.jsonl")
    iterations = [r for r in records if "iteration" in r]
    if not iterations:
        raise ValueError(f"{run_dir} has no completed iteration in metrics.jsonl")
    episodes = [(r["step"], r["episodic_return"]) for r in iterations if "episodic_return" in r]
    steps = np.array([s for s, _ in episodes], dtype=float)
    returns = np.array([v for _, v in episodes], dtype=float)
    last_step = iterations[-1]["step"]
    final = returns[steps >= (1.0 - final_fraction) * last_step]
    rollout = sum(r["rollout_s"] for r in iterations)
    update = sum(r["update_s"] for r in iterations)
    probes: dict[int, dict[int, dict[str, float]]] = defaultdict(dict)
    for r in records:
        if "diag_epoch" in r:
            probes[r["diag_iteration"]][r["diag_epoch"]] = {k: r[k] for k in KURTOSIS}
    probe_steps = {r["diag_iteration"]: r["step"] for r in records if "diag_epoch" in r}
    batch = cfg.env.num_envs * cfg.ppo.num_steps
    return {
        "complete": last_step == cfg.total_steps // batch * batch,
        "run": str(run_dir),
        "env": cfg.env.id,
        "algo": cfg.algo.label,
        "seed": cfg.seed,
        "last_step": last_step,
        "return_steps": steps,
        "returns": returns,
        "final_return": float(final.mean()) if final.size else float("nan"),
        "steps_per_s": iterations[-1]["steps_per_s"],
        "rollout_fraction": rollout / (rollout + update),
        "probes": dict(probes),
        "probe_steps": probe_steps,
    }


def _probe_array(run: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, epochs) of one kurtosis metric: rows = probed updates, cols = epoch."""
    rows = sorted(run["probes"])
    epochs = max(len(run["probes"][i]) for i in rows)
    values = np.full((len(rows), epochs), np.nan)
    for row, i in enumerate(rows):
        for epoch, probe in run["probes"][i].items():
            value = probe[metric]
            # at an update's start the ratios are 1 up to rounding: their kurtosis is undefined
            undefined = value is None or (metric == "kurtosis/ratio" and epoch == 0)
            values[row, epoch] = np.nan if undefined else value
    return np.array([run["probe_steps"][i] for i in rows]), values


def aggregate(runs: list[dict], grid_points: int) -> dict[str, dict[str, dict]]:
    """env -> algo -> curves (seeds, points) and scalars (mean, sample std over seeds: NaN for
    one seed; both NaN if a seed has no value)."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["env"]][run["algo"]].append(run)
    table: dict[str, dict[str, dict]] = {}
    for env, algos in grouped.items():
        table[env] = {}
        horizon = min(r["last_step"] for rs in algos.values() for r in rs)
        grid = np.linspace(0, horizon, grid_points)
        for algo, members in algos.items():
            entry: dict = {"seeds": sorted(r["seed"] for r in members), "grid": grid}
            entry["return_curve"] = np.array(
                [np.interp(grid, r["return_steps"], r["returns"]) for r in members]
            )
            for key in ("final_return", "steps_per_s", "rollout_fraction"):
                values = [r[key] for r in members]
                spread = None if np.isnan(values).any() else summarize(values)
                entry[key] = (spread.mean, spread.std) if spread else (np.nan, np.nan)
            entry["final_returns"] = {r["seed"]: r["final_return"] for r in members}
            entry["steps"] = min(r["last_step"] for r in members)
            if all(r["probes"] for r in members):
                for metric in KURTOSIS:
                    arrays = [_probe_array(r, metric) for r in members]
                    n = min(len(s) for s, _ in arrays)
                    entry[f"{metric}/steps"] = arrays[0][0][:n]
                    column = STEP_EPOCH.get(metric, 0)
                    entry[f"{metric}/vs_step"] = np.array([v[:n, column] for _, v in arrays])
                    entry[f"{metric}/vs_epoch"] = np.array(
                        [np.nanmedian(v, axis=0) for _, v in arrays]
                    )
            table[env][algo] = entry
    return table


def _ordered(algos) -> list[str]:
    return sorted(algos, key=lambda a: (ORDER.index(a) if a in ORDER else len(ORDER), a))


def _pm(pair: tuple[float, float], digits: int = 0) -> str:
    """mean ± sample std; the mean alone where std is NaN (one seed, or a seed without a value)."""
    if np.isnan(pair[1]):
        return f"{pair[0]:,.{digits}f}"
    return f"{pair[0]:,.{digits}f} ± {pair[1]:,.{digits}f}"


def results_markdown(table: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| env | algo | seeds | steps | final return | per seed | env steps/s | "
        "actor-grad-norm κ, epoch 0 → last | actor-grad-coord κ, epoch 0 → last | "
        "critic-grad-norm κ, epoch 0 → last | ratio κ, epoch 1 → last |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for env in sorted(table):
        for algo in _ordered(table[env]):
            e = table[env][algo]
            per_seed = ", ".join(f"{v:,.0f}" for _, v in sorted(e["final_returns"].items()))
            kurt = []
            for metric in KURTOSIS[:3] + ("kurtosis/ratio",):
                key = f"{metric}/vs_epoch"
                if key not in e:
                    kurt.append("—")
                    continue
                first = 1 if metric == "kurtosis/ratio" else 0  # ratios ≡ 1 at epoch 0
                first, last = np.nanmean(e[key][:, first]), np.nanmean(e[key][:, -1])
                kurt.append(f"{first:.2f} → {last:.2f}")
            lines.append(
                f"| {env} | {algo} | {len(e['seeds'])} | {e['steps']:,} | "
                f"{_pm(e['final_return'])} | {per_seed} | {_pm(e['steps_per_s'])} | "
                f"{' | '.join(kurt)} |"
            )
    return "\n".join(lines)


def make_plots(table: dict[str, dict[str, dict]], out: Path) -> list[Path]:
    paths = []
    for env, algos in table.items():
        ordered = _ordered(algos)
        grid = algos[ordered[0]]["grid"]
        paths.append(
            plot_curves(
                {a: algos[a]["return_curve"] for a in ordered},
                out / f"{env}_returns.png",
                x=grid,
                xlabel="environment steps",
                ylabel="episodic return (training)",
                title=f"{env}: PPO vs PPO without clipping vs GMOM",
            )
        )
        probed = [a for a in ordered if f"{KURTOSIS[0]}/vs_step" in algos[a]]
        if not probed:
            continue
        for axis, xlabel in (("vs_step", "environment steps"), ("vs_epoch", "epoch in update")):
            fig, axes = plt.subplots(2, 3, figsize=(15, 8))
            for ax, metric in zip(axes.flat, KURTOSIS, strict=True):
                curves = {a: algos[a][f"{metric}/{axis}"] for a in probed}
                x = algos[probed[0]][f"{metric}/steps"] if axis == "vs_step" else None
                if x is not None:
                    n = min(c.shape[1] for c in curves.values())
                    curves, x = {a: c[:, :n] for a, c in curves.items()}, x[:n]
                title = metric.split("/")[1] + " excess kurtosis"
                if axis == "vs_step":
                    title += " (last epoch)" if STEP_EPOCH.get(metric) == -1 else " (update start)"
                plot_curves(curves, "", x=x, xlabel=xlabel, ylabel="κ", title=title, ax=ax)
            paths.append(save(fig, out / f"{env}_kurtosis_{axis}.png"))
    return paths


def evaluate(root: Path, out: Path, final_fraction: float, grid_points: int) -> dict:
    run_dirs = find_runs(root)
    if not run_dirs:
        raise FileNotFoundError(f"no run with config.yaml and metrics.jsonl under {root}")
    loaded = [load_run(r, final_fraction) for r in run_dirs]
    runs = [r for r in loaded if r["complete"]]
    for r in loaded:
        if not r["complete"]:
            print(f"skipped (unfinished): {r['run']} at step {r['last_step']:,}")
    if not runs:
        raise FileNotFoundError(f"no finished run under {root}")
    with warnings.catch_warnings():  # all-NaN columns (ratio kurtosis at epoch 0) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        table = aggregate(runs, grid_points)
        out.mkdir(parents=True, exist_ok=True)
        markdown = results_markdown(table)
        plots = make_plots(table, out)
    (out / "results.md").write_text(markdown + "\n")
    serialisable = {
        env: {
            algo: {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in e.items()}
            for algo, e in algos.items()
        }
        for env, algos in table.items()
    }
    (out / "results.json").write_text(json.dumps(serialisable, indent=1))
    return {"markdown": markdown, "plots": plots, "table": table, "runs": runs}


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    report = evaluate(Path(cfg.runs), out, cfg.final_fraction, cfg.grid_points)
    print(f"\ngmom_ppo results ({len(report['runs'])} runs)\n")
    print(report["markdown"])
    print(f"\ntable: {out / 'results.md'}")
    for path in report["plots"]:
        print(f"plot:  {path}")
    if cfg.figures:
        for path in copy_figures(report["plots"], cfg.figures):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
