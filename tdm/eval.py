"""Evaluate trained models (Schubert et al. 2023, §5): MPC returns with each dynamics model as a
% of the same planner on the true simulator, the generalist policy acting directly, and k-step
open-loop prediction errors on the dataset's test episodes.

    python -m tdm.eval runs=runs/tdm/multirun/<date> dataset=runs/tdm/data/<dir>
    python -m tdm.eval runs=... dataset=... tasks=heldout       # zero-shot on held-out bodies

Planning episodes use environment seeds (10 000 + i) that tdm.collect never uses, the same for
every model, so the comparison with the true-simulator planner is paired.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.config import check_number, fail
from common.logging import find_runs
from common.plotting import plot_curves, save
from common.stats import format_summary, summarize
from tdm.collect import true_score
from tdm.data import load_manifest, load_task
from tdm.envs import make_env
from tdm.model import History, MLPDynamics
from tdm.planners import Planner
from tdm.planners import check_config as check_planner
from tdm.train import load_model

EVAL_SEED = 10_000


def validate(cfg: DictConfig) -> None:
    if cfg.runs is None or cfg.dataset is None:
        fail("runs" if cfg.runs is None else "dataset", None, "a directory")
    check_number(cfg, "plan_episodes", integer=True)
    check_planner(cfg.planner, "planner.")
    check_number(cfg, "rank_every", integer=True, low=0, inclusive=True)
    check_number(cfg.kstep, "max_k", "kstep.", integer=True)
    check_number(cfg.kstep, "starts", "kstep.", integer=True)


def label(run_cfg: DictConfig) -> str:
    """Model name, plus how it was trained when it is a few-shot run."""
    name = run_cfg.model.name
    if run_cfg.shots is not None:
        name += f" {'fine-tuned' if run_cfg.init else 'scratch'} {run_cfg.shots}-shot"
    return name


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation of two score vectors (Pearson correlation of their ranks)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def episode(cfg: DictConfig, task: str, index: int, model, context: int) -> dict:
    """One evaluation episode; model None = the true simulator. Returns its return, planning
    decisions/s and, for a learned model every `rank_every` decisions, the rank correlation
    between the model's and the true simulator's returns of the candidates it scored first."""
    env = make_env(task, EVAL_SEED + index)
    obs = torch.from_numpy(env.reset())[None]
    actions = torch.zeros(0, env.act_dim)
    rewards = torch.zeros(0)
    planner = Planner.from_config(cfg.planner, env.act_dim, cfg.seed + index)
    gen = torch.Generator().manual_seed(cfg.seed + index)
    policy = getattr(model, "role", None) == "policy"
    seconds, ranking = 0.0, []
    for t in range(env.episode_len):
        history = History(obs, actions, rewards)
        scored = []

        def score(a, h=history, scored=scored):
            if model is None:
                returns = true_score(env)(a)
            elif isinstance(model, MLPDynamics):
                returns = model.imagine(h, a, gen)[0].sum(1)
            else:
                returns = model.imagine(h, a, context=context)[0].sum(1)
            scored.append((a, returns))
            return returns

        start = time.perf_counter()
        if policy:
            action = model.act(history, context=context).numpy()
        else:
            action = planner.act(score)
        seconds += time.perf_counter() - start
        if model is not None and not policy and cfg.rank_every and t % cfg.rank_every == 0:
            a, predicted = scored[0]
            true = env.simulate(env.get_state(), a.numpy()).sum(1)
            ranking.append(spearman(predicted.cpu().numpy(), true))
        o, r, done = env.step(action)
        obs = torch.cat([obs, torch.from_numpy(o)[None]])
        actions = torch.cat([actions, torch.as_tensor(action, dtype=torch.float32)[None]])
        rewards = torch.cat([rewards, torch.tensor([r], dtype=torch.float32)])
        if done:
            break
    return {
        "return": float(rewards.sum()),
        "decisions_per_s": len(rewards) / seconds,
        "ranking": ranking,
    }


@torch.no_grad()
def kstep_errors(model, data, max_k: int, starts: int, context: int, seed: int) -> np.ndarray:
    """Open-loop error after k = 1 … max_k steps on test episodes: mean over dimensions of
    the squared error divided by the dimension's variance in the test data."""
    gen = torch.Generator().manual_seed(seed)
    var = data.obs.flatten(0, 1).var(0).clamp_min(1e-8)
    t = data.actions.shape[1]
    errors = []
    for _ in range(starts):
        ep = int(torch.randint(data.num_episodes, (1,), generator=gen))
        t0 = int(torch.randint(t - max_k + 1, (1,), generator=gen))
        history = History(data.obs[ep, : t0 + 1], data.actions[ep, :t0], data.rewards[ep, :t0])
        acts = data.actions[ep, t0 : t0 + max_k][None]
        if isinstance(model, MLPDynamics):
            _, pred = model.imagine(history, acts, gen)
        else:
            _, pred = model.imagine(history, acts, context=context)
        truth = data.obs[ep, t0 + 1 : t0 + 1 + max_k]
        errors.append((((pred[0].cpu() - truth) ** 2) / var).mean(-1).numpy())
    return np.mean(errors, 0)


def eval_tasks(cfg: DictConfig, runs: list[tuple[DictConfig, dict]]) -> list[str]:
    if cfg.tasks == "heldout":
        return load_manifest(cfg.dataset)["heldout"]
    if cfg.tasks is None:
        return sorted({t for _, payload in runs for t in payload["tasks"]})
    return list(cfg.tasks)


def run(cfg: DictConfig, out: Path) -> dict:
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    dirs = find_runs(cfg.runs)
    if not dirs:
        fail("runs", cfg.runs, "a tdm.train run directory or a sweep of them")
    runs = []
    for d in dirs:
        if not (d / "best.pt").is_file():
            fail("runs", str(d), "runs that finished at least one validation (best.pt)")
        model, payload = load_model(d / "best.pt")
        m = payload["model_cfg"]
        if m["kind"] == "transformer" and m["context"] + cfg.planner.horizon > m["window"]:
            fail(
                "planner.horizon",
                cfg.planner.horizon,
                f"<= model.window - model.context = {m['window'] - m['context']} of run {d}",
            )
        runs.append((OmegaConf.load(d / "config.yaml"), payload, model))
    tasks = eval_tasks(cfg, [(c, p) for c, p, _ in runs])
    manifest = load_manifest(cfg.dataset)
    results: dict = {"tasks": {}, "config": OmegaConf.to_container(cfg, resolve=True)}
    for task in tasks:
        r = results["tasks"][task] = {"scores": manifest["tasks"][task]["scores"]}
        true = [
            episode(cfg, task, i, None, 0)
            for i in tqdm(
                range(cfg.plan_episodes), desc=f"{task} true simulator", disable=not cfg.progress
            )
        ]
        r["true_returns"] = [x["return"] for x in true]
        r["true_decisions_per_s"] = float(np.mean([x["decisions_per_s"] for x in true]))
        per_model = defaultdict(lambda: defaultdict(list))
        test = load_task(cfg.dataset, task).episodes("test")
        for run_cfg, _, model in runs:
            name, ctx = label(run_cfg), run_cfg.model.get("context", 0)
            eps = [
                episode(cfg, task, i, model, ctx)
                for i in tqdm(
                    range(cfg.plan_episodes),
                    desc=f"{task} {name} seed {run_cfg.seed}",
                    disable=not cfg.progress,
                )
            ]
            returns = [x["return"] for x in eps]
            m = per_model[name]
            m["returns"].append(returns)
            m["percent_of_true"].append(100 * np.mean(returns) / np.mean(r["true_returns"]))
            m["decisions_per_s"].append(float(np.mean([x["decisions_per_s"] for x in eps])))
            if eps[0]["ranking"]:
                m["ranking"].append(float(np.mean([c for x in eps for c in x["ranking"]])))
            if getattr(model, "role", "dynamics") == "dynamics":
                m["kstep"].append(
                    kstep_errors(
                        model, test, cfg.kstep.max_k, cfg.kstep.starts, ctx, cfg.seed
                    ).tolist()
                )
        r["models"] = {k: dict(v) for k, v in per_model.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    figures = Path(cfg.figures) if cfg.figures else out
    tag = "heldout" if cfg.tasks == "heldout" else "_".join(tasks)
    for path in plot(results, figures, tag):
        print(f"plot: {path}")
    return results


def print_table(results: dict) -> None:
    print(
        "| task | model | return | % of true-simulator planner | 1-step / k-step error | "
        "candidate ranking vs true | decisions/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for task, r in results["tasks"].items():
        true = summarize(r["true_returns"])
        print(
            f"| {task} | true simulator (n={true.n} episodes) | {true.mean:.1f} | 100 | – | 1 | "
            f"{r['true_decisions_per_s']:.1f} |"
        )
        for name, m in r["models"].items():
            ret = summarize([np.mean(x) for x in m["returns"]])
            pct = format_summary(summarize(m["percent_of_true"]), 1)
            err = "–"
            if m.get("kstep"):
                k = np.asarray(m["kstep"])
                err = f"{k[:, 0].mean():.3f} / {k[:, -1].mean():.3f}"
            rank = f"{np.mean(m['ranking']):.2f}" if m.get("ranking") else "–"
            print(
                f"| {task} | {name} | {ret.mean:.1f} | {pct} | {err} | {rank} | "
                f"{np.mean(m['decisions_per_s']):.1f} |"
            )


def plot(results: dict, directory: Path, tag: str) -> list[Path]:
    """k-step error curves per task, and % of the true-simulator planner per task and model."""
    import matplotlib.pyplot as plt

    paths = []
    for task, r in results["tasks"].items():
        curves = {n: np.asarray(m["kstep"]) for n, m in r["models"].items() if m.get("kstep")}
        if curves:
            k = np.arange(1, next(iter(curves.values())).shape[1] + 1)
            paths.append(
                plot_curves(
                    curves,
                    directory / f"kstep_{task}.png",
                    x=k,
                    xlabel="k (open-loop steps)",
                    ylabel="normalised MSE",
                    title=f"{task}: k-step prediction error (test episodes)",
                )
            )
    names = sorted({n for r in results["tasks"].values() for n in r["models"]})
    tasks = list(results["tasks"])
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(tasks), 3.5))
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        vals = [
            results["tasks"][t]["models"].get(name, {}).get("percent_of_true", [np.nan])
            for t in tasks
        ]
        means = [np.mean(v) for v in vals]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
        ax.bar(np.arange(len(tasks)) + j * width, means, width, yerr=stds, label=name)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=15)
    ax.set_ylabel("% of true-simulator planner")
    ax.legend(fontsize=7)
    paths.append(save(fig, directory / f"planning_{tag}.png"))
    return paths


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
