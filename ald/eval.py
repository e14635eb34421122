"""Evaluate ALD runs: learning curves against environment steps and wall-clock, steps and
seconds to solve, frozen-weight success of the acting network, time split, acting latency.

    python -m ald.eval runs=runs/ald/multirun/<date-time>
    python -m ald.eval runs=runs/ald/multirun/<date-time> figures=ald/figures   # README plots

Writes <runs>/eval/results.md, results.json and the plots (copied to `figures` when given).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ald.envs import make_env
from ald.model import build_net
from ald.train import ALGOS, probe_env
from common.checkpoint import latest_checkpoint
from common.logging import find_runs, read_metrics
from common.plotting import copy_figures, plot_curves, save
from common.stats import format_summary, summarize

ORDER = ("lstm", "transformer", "ald")


def smoothed(values: np.ndarray, width: int) -> np.ndarray:
    """Trailing mean over `width` records (the first ones average what there is)."""
    out = np.empty_like(values)
    for i in range(values.size):
        out[i] = values[max(0, i - width + 1) : i + 1].mean()
    return out


def first_crossing(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """x at the first record with y ≥ threshold; NaN if never."""
    hits = np.flatnonzero(y >= threshold)
    return float(x[hits[0]]) if hits.size else float("nan")


def load_nets(run_dir: Path) -> tuple[dict[str, torch.nn.Module], DictConfig]:
    """{"actor": the network that acts in the environment (ALD: the distilled LSTM), and for
    ALD "learner": the GTrXL it was distilled from}, from the latest checkpoint of a run."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to evaluate")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    extra = payload["extra"]
    learner = ALGOS[cfg.algo.name][0]
    specs = {
        "learner": {"name": learner, **OmegaConf.to_container(cfg.networks[learner])},
        "actor": extra["actor_spec"],
    }
    nets = {}
    for role, state in payload["models"].items():
        nets[role] = build_net(specs[role], extra["obs_dim"], extra["num_actions"])
        nets[role].load_state_dict(state)
        nets[role].eval()
    if cfg.algo.name != "ald":  # actor = learner: one network, the one that acted
        nets = {"actor": nets["learner"]}
    return nets, cfg


@torch.no_grad()
def frozen_success(
    net: torch.nn.Module, task: DictConfig, episodes: int, envs: int, seed: int, greedy: bool
):
    """Frozen weights on new environments, actions sampled from the policy (or its argmax with
    `greedy`): (success rate, mean return) over the first `episodes` episodes."""
    torch.manual_seed(seed)
    env = make_env(task, envs, seed)
    obs, first = torch.as_tensor(env.reset()), torch.ones(envs, dtype=torch.bool)
    state = net.initial_state(envs)
    success, returns = [], []
    while len(success) < episodes:
        logits, _, state = net(obs[:, None], first[:, None], state)
        dist = torch.distributions.Categorical(logits=logits[:, 0])
        action = dist.probs.argmax(-1) if greedy else dist.sample()
        next_obs, _, done, info = env.step(action.numpy())
        success.extend(info["success"][done].tolist())
        returns.extend(info["episode_return"][done].tolist())
        obs, first = torch.as_tensor(next_obs), torch.as_tensor(done)
    env.close()
    return float(np.mean(success[:episodes])), float(np.mean(returns[:episodes]))


@torch.no_grad()
def acting_latency(spec: dict, obs_dim: int, num_actions: int, batch: int, steps: int) -> float:
    """Median seconds of one acting step (batch envs at once, state carried), 1 thread."""
    net = build_net(spec, obs_dim, num_actions).eval()
    obs = torch.randn(batch, 1, obs_dim)
    first = torch.zeros(batch, 1, dtype=torch.bool)
    state = net.initial_state(batch)
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        _, _, state = net(obs, first, state)
        times.append(time.perf_counter() - tick)
    return float(np.median(times[steps // 5 :]))


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def evaluate(cfg: DictConfig) -> str:
    root = Path(cfg.runs)
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no runs (config.yaml + metrics.jsonl) under {root}")
    out = root / "eval"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    per_algo: dict[str, list[dict]] = {}
    for run_dir in runs:
        records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "success" in r]
        if not records:
            continue
        nets, run_cfg = load_nets(run_dir)
        steps = np.array([r["step"] for r in records], dtype=float)
        seconds = np.array([r["train_seconds"] for r in records])
        success = smoothed(np.array([r["success"] for r in records]), cfg.smooth)
        frozen = {
            role: frozen_success(
                net, run_cfg.task, cfg.episodes, cfg.num_envs, cfg.seed + run_cfg.seed, cfg.greedy
            )[0]
            for role, net in nets.items()
        }
        mean = {
            k: float(np.mean([r[k] for r in records if k in r]))
            for k in ("act_s", "env_s", "learn_s", "wait_s", "policy_lag")
        }
        per_algo.setdefault(run_cfg.algo.name, []).append(
            {
                "run": str(run_dir),
                "seed": run_cfg.seed,
                "task": run_cfg.task.label,
                "steps": steps,
                "seconds": seconds,
                "success": success,
                "frozen_success": frozen["actor"],
                "learner_frozen_success": frozen.get("learner", float("nan")),
                "steps_to_solve": first_crossing(steps, success, cfg.threshold),
                "seconds_to_solve": first_crossing(seconds, success, cfg.threshold),
                "steps_per_s": records[-1]["steps_per_s"],
                **mean,
            }
        )
    algos = [a for a in ORDER if a in per_algo]
    tasks = sorted({r["task"] for rs in per_algo.values() for r in rs})
    lines = [
        f"# ALD results: {root}",
        "",
        f"Task(s): {', '.join(tasks)}. Solved = trailing mean of {cfg.smooth} logged training "
        f"success rates ≥ {cfg.threshold}. Frozen = the acting network (ALD: the distilled "
        f"LSTM) with frozen weights, {'greedy' if cfg.greedy else 'sampled'} actions, on "
        f"{cfg.episodes} new episodes per run; for ALD also its GTrXL learner acting itself. "
        "mean ± sample std (ddof = 1) over seeds, 95% t-interval; a seed that never solved "
        "counts in `solved` only.",
        "",
        _row(
            [
                "algo",
                "seeds",
                "solved",
                "env steps to solve",
                "wall-clock s to solve",
                "frozen success (acting network)",
                "frozen success (ALD's learner)",
                "env steps/s",
            ]
        ),
        _row(["---"] * 8),
    ]
    summary: dict[str, dict] = {}
    for algo in algos:
        rs = per_algo[algo]
        solved = [r for r in rs if not np.isnan(r["steps_to_solve"])]
        steps = (
            format_summary(summarize([r["steps_to_solve"] for r in solved]), 0) if solved else "—"
        )
        secs = (
            format_summary(summarize([r["seconds_to_solve"] for r in solved]), 0) if solved else "—"
        )
        frozen = format_summary(summarize([r["frozen_success"] for r in rs]))
        learner = "—"
        if algo == "ald":
            learner = format_summary(summarize([r["learner_frozen_success"] for r in rs]))
        sps = format_summary(summarize([r["steps_per_s"] for r in rs]), 0)
        solved_of = f"{len(solved)}/{len(rs)}"
        lines.append(_row([algo, len(rs), solved_of, steps, secs, frozen, learner, sps]))
        summary[algo] = {
            "seeds": [r["seed"] for r in rs],
            "solved": len(solved),
            "steps_to_solve": [r["steps_to_solve"] for r in rs],
            "seconds_to_solve": [r["seconds_to_solve"] for r in rs],
            "frozen_success": [r["frozen_success"] for r in rs],
            "learner_frozen_success": [r["learner_frozen_success"] for r in rs],
            "steps_per_s": [r["steps_per_s"] for r in rs],
        }

    lines += [
        "",
        "Time per unroll (means over updates): the actor's acting (network) and environment "
        "time, the learner's update time and its wait for the next unroll.",
        "",
        _row(
            [
                "algo",
                "acting ms/unroll",
                "env ms/unroll",
                "learning ms/unroll",
                "learner idle",
                "policy lag (updates)",
            ]
        ),
        _row(["---"] * 6),
    ]
    for algo in algos:
        rs = per_algo[algo]
        m = {k: np.mean([r[k] for r in rs]) for k in ("act_s", "env_s", "learn_s", "wait_s")}
        idle = m["wait_s"] / (m["wait_s"] + m["learn_s"])
        lag = np.mean([r["policy_lag"] for r in rs])
        lines.append(
            _row(
                [
                    algo,
                    f"{1e3 * m['act_s']:.1f}",
                    f"{1e3 * m['env_s']:.1f}",
                    f"{1e3 * m['learn_s']:.1f}",
                    f"{100 * idle:.0f}%",
                    f"{lag:.1f}",
                ]
            )
        )

    any_cfg = OmegaConf.load(runs[0] / "config.yaml")
    obs_dim, num_actions = probe_env(any_cfg.task)
    lines += [
        "",
        f"Acting latency per step (median of {cfg.latency.steps}, 1 thread, this machine):",
        "",
        _row(["network", "batch", "latency ms"]),
        _row(["---"] * 3),
    ]
    latency = {}
    nets = {"lstm": {"name": "lstm", **OmegaConf.to_container(any_cfg.networks.lstm)}}
    for memory in cfg.latency.memories:
        spec = {"name": "gtrxl", **OmegaConf.to_container(any_cfg.networks.gtrxl)}
        nets[f"gtrxl (M={memory})"] = {**spec, "memory": memory}
    for label, spec in nets.items():
        for batch in cfg.latency.batch_sizes:
            seconds = acting_latency(spec, obs_dim, num_actions, batch, cfg.latency.steps)
            latency[f"{label} batch {batch}"] = seconds
            lines.append(_row([label, batch, f"{1e3 * seconds:.3f}"]))

    figures = _plot(per_algo, algos, out, cfg.threshold)
    lines += ["", "Plots: " + ", ".join(str(p) for p in figures)]
    if cfg.figures:
        copy_figures(figures, cfg.figures)
        lines.append(f"Copied to {cfg.figures}/")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps({"algos": summary, "latency_s": latency}, indent=1)
    )
    return text


def _plot(per_algo: dict, algos: list[str], out: Path, threshold: float) -> list[Path]:
    """Success vs environment steps and vs wall-clock: mean ± std over seeds, each algorithm on
    a grid that ends where its shortest seed ends (so the mean is always over every seed)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "steps", "environment steps"),
        (axes[1], "seconds", "wall-clock seconds (learner)"),
    ):
        for algo in algos:
            grid = np.linspace(0, min(r[key][-1] for r in per_algo[algo]), 200)
            curve = np.stack([np.interp(grid, r[key], r["success"]) for r in per_algo[algo]])
            plot_curves({algo: curve}, out, x=grid, xlabel=label, ylabel="training success", ax=ax)
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    fig.suptitle("I-Maze: LSTM alone, transformer (GTrXL) alone, ALD (smoothed training success)")
    return [save(fig, out / "success_curves.png")]


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    print(evaluate(cfg))


if __name__ == "__main__":
    main()
