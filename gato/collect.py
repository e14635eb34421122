"""Build Gato's offline dataset (Reed et al. 2022, §3): every task's expert episodes, filtered
to ≥ 80% of the expert's score and split into train / val, the text documents split by document,
and the text tokenizer trained on the training text, the caption templates and the BabyAI
missions.

    python -m gato.collect experiment=small        # → runs/gato/data/<dir>/

Writes `minari/` (one Minari dataset per task), `text_tokenizer.json` and `manifest.json`
(per-task expert and random scores, kept episodes and their split, seeds, collection speed,
the text split and the caption seeds).
"""

from __future__ import annotations

import json
import time
from multiprocessing import get_context
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.config import check_number, fail
from gato.captions import caption_set
from gato.data import keep_episodes, random_policy, run_episode, write_dataset
from gato.tasks import all_tasks, get_task
from gato.tokenizer import offline_text, train_text_tokenizer

SEED_STRIDE = 100_000  # episode i of a collection with seed s starts from s * stride + i
EVAL_SEED = 10**9  # gato.eval's fresh episodes start here, far from every collection seed
CAPTION_SEEDS = {"train": 1, "val": 2, "test": 3}  # gato.captions.caption_set seeds per split


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any episode is collected, naming the field."""
    names = sorted(all_tasks()) if cfg.tasks is None else list(cfg.tasks)
    for name in names:
        try:
            get_task(name)
        except ValueError as e:
            fail("tasks", name, str(e))
    for key in ("control", "babyai", "atari"):
        check_number(cfg.episodes, key, "episodes.", integer=True)
    check_number(cfg, "random_episodes", integer=True)
    check_number(cfg, "workers", integer=True)
    check_number(cfg, "seed", integer=True, low=0, inclusive=True)
    check_number(cfg, "filter", low=0.0, high=1.0, inclusive=True)
    check_number(cfg, "control_noise", low=0.0, high=2.0, inclusive=True)
    check_number(cfg, "val_fraction", high=1.0)
    check_number(cfg.text, "chars", "text.", integer=True)
    check_number(cfg.text, "vocab_size", "text.", integer=True, low=1024, inclusive=True)
    check_number(cfg.text, "val_fraction", "text.", high=1.0)
    check_number(cfg.text, "test_fraction", "text.", high=1.0)
    for key in CAPTION_SEEDS:
        check_number(cfg.captions, key, "captions.", integer=True)


def collect_task(
    name: str,
    episodes: int,
    random_episodes: int,
    seed: int,
    frac: float,
    val_fraction: float,
    out: str,
    noise: float = 0.0,
) -> dict:
    """One task: expert and random episodes, the filter, the split, the Minari dataset.

    With `noise` > 0 the dataset is `episodes` noise-injected expert rollouts (clean actions
    recorded, `run_episode`), filtered against the score of `episodes` clean expert rollouts."""
    task = get_task(name)
    env = task.make_env(seed)
    base = seed * SEED_STRIDE
    clock = time.perf_counter()
    expert = [run_episode(task, env, task.make_expert(env), base + i) for i in range(episodes)]
    seconds = time.perf_counter() - clock
    data = expert
    if noise > 0:
        data = [
            run_episode(task, env, task.make_expert(env), base + i, noise) for i in range(episodes)
        ]
    rand = [
        run_episode(task, env, random_policy(env, base + episodes + i), base + episodes + i)
        for i in range(random_episodes)
    ]
    scores = {
        "expert": float(np.mean([e.ret for e in expert])),
        "random": float(np.mean([e.ret for e in rand])),
    }
    if scores["expert"] <= scores["random"]:
        raise RuntimeError(
            f"{name}: the expert ({scores['expert']}) does not beat random ({scores['random']})"
        )
    kept = keep_episodes([e.ret for e in data], scores, frac)
    if len(kept) < 2:
        raise RuntimeError(
            f"{name}: {len(kept)} of {episodes} expert episodes pass the filter; "
            "collect more (episodes.<domain>) or lower control_noise"
        )
    n_val = max(1, round(val_fraction * len(kept)))
    write_dataset(Path(out), task, [data[i] for i in kept], env, scores)
    steps = sum(e.steps for e in expert)
    missions = (
        sorted({str(e.observations["mission"][0]) for e in expert})
        if task.domain == "babyai"
        else []
    )
    return {
        "domain": task.domain,
        "scores": scores,
        "expert_returns": [e.ret for e in expert],
        "noise": noise,
        "dataset_returns": [e.ret for e in data],
        "random_returns": [e.ret for e in rand],
        "seeds": [base + i for i in kept],
        "split": {
            "train": list(range(len(kept) - n_val)),
            "val": list(range(len(kept) - n_val, len(kept))),
        },
        "kept": len(kept),
        "collected": episodes,
        "expert_steps": steps,
        "expert_steps_per_s": steps / max(seconds, 1e-9),
        "missions": missions,
    }


def _collect(args: tuple) -> tuple[str, dict]:
    return args[0], collect_task(*args)


def split_documents(n: int, val: float, test: float, seed: int) -> dict[str, list[int]]:
    """Document indices of train / val / test, shuffled by `seed`, at least one in each."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val, n_test = max(1, round(val * n)), max(1, round(test * n))
    if n_val + n_test >= n:
        fail("text.chars", n, "enough text for train, val and test documents")
    return {
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
        "train": sorted(order[n_val + n_test :]),
    }


def run(cfg: DictConfig, out: Path) -> dict:
    validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(all_tasks()) if cfg.tasks is None else list(cfg.tasks)
    jobs = [
        (
            name,
            int(cfg.episodes[get_task(name).domain]),
            cfg.random_episodes,
            cfg.seed,
            cfg.filter,
            cfg.val_fraction,
            str(out / "minari"),
            cfg.control_noise if get_task(name).domain == "control" else 0.0,
        )
        for name in names
    ]
    jobs.sort(key=lambda j: get_task(j[0]).domain != "atari")  # the slowest first
    tasks = {}
    with get_context("spawn").Pool(min(cfg.workers, len(jobs))) as pool:
        results = pool.imap_unordered(_collect, jobs)
        for name, meta in tqdm(results, total=len(jobs), desc="tasks", disable=not cfg.progress):
            tasks[name] = meta
            s = meta["scores"]
            tqdm.write(
                f"[gato.collect] {name}: expert {s['expert']:.1f}, random {s['random']:.1f}, "
                f"kept {meta['kept']}/{meta['collected']}, "
                f"{meta['expert_steps_per_s']:.0f} steps/s"
            )
    docs = offline_text(cfg.text.chars)
    text_split = split_documents(len(docs), cfg.text.val_fraction, cfg.text.test_fraction, cfg.seed)
    _, captions = caption_set(cfg.captions.train, CAPTION_SEEDS["train"])
    missions = [m for meta in tasks.values() for m in meta["missions"]]
    corpus = [docs[i] for i in text_split["train"]] + captions + missions
    tokenizer = train_text_tokenizer(corpus, cfg.text.vocab_size)
    tokenizer.save(out / "text_tokenizer.json")
    by_domain: dict[str, list[float]] = {}
    for meta in tasks.values():
        by_domain.setdefault(meta["domain"], []).append(meta["expert_steps_per_s"])
    manifest = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "tasks": dict(sorted(tasks.items())),
        "text": {"chars": cfg.text.chars, "split": text_split},
        "captions": {
            k: {"n": int(cfg.captions[k]), "seed": CAPTION_SEEDS[k]} for k in CAPTION_SEEDS
        },
        "vocab_size": cfg.text.vocab_size,
        "eval_seed": EVAL_SEED,
        "steps_per_s": {d: float(np.mean(v)) for d, v in sorted(by_domain.items())},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(
        f"[gato.collect] {out}: {len(tasks)} tasks, expert steps/s per domain (one process "
        f"each) {json.dumps({d: round(v) for d, v in manifest['steps_per_s'].items()})}"
    )
    return manifest


@hydra.main(version_base="1.3", config_path="conf", config_name="collect")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
