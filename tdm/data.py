"""Episodes written by tdm.collect (Minari datasets + manifest) as tensors, and the sampler that
trains the models: windows of W consecutive timesteps (W = 2: single transitions for the MLPs)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

SPLITS = ("train", "val", "test")


@dataclass
class TaskData:
    """All episodes of one task: obs (n, T + 1, D), actions (n, T, A), rewards (n, T)."""

    task: str
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    split: dict[str, list[int]]
    scores: dict[str, float]

    def episodes(self, split: str, shots: int | None = None) -> TaskData:
        """The episodes of one split (the first `shots` of them if given: the split's order is
        stratified over the collecting policies, tdm.collect.split_episodes)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not valid: one of {SPLITS}")
        ids = self.split[split][:shots]
        if shots is not None and len(ids) < shots:
            raise ValueError(f"shots={shots}: task {self.task} has {len(ids)} {split} episodes")
        return replace(
            self, obs=self.obs[ids], actions=self.actions[ids], rewards=self.rewards[ids]
        )

    @property
    def num_episodes(self) -> int:
        return self.obs.shape[0]


def load_manifest(dataset: str | Path) -> dict:
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"dataset={dataset}: no manifest.json (run tdm.collect first)")
    return json.loads(path.read_text())


def load_task(dataset: str | Path, task: str) -> TaskData:
    """One task's Minari dataset as tensors."""
    import minari

    manifest = load_manifest(dataset)
    if task not in manifest["tasks"]:
        raise ValueError(f"task {task!r} is not in dataset {dataset}: {sorted(manifest['tasks'])}")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(dataset) / "minari")
    episodes = list(minari.load_dataset(f"tdm/{task}/mixed-v0").iterate_episodes())
    meta = manifest["tasks"][task]
    return TaskData(
        task=task,
        obs=torch.stack([torch.as_tensor(e.observations) for e in episodes]).float(),
        actions=torch.stack([torch.as_tensor(e.actions) for e in episodes]).float(),
        rewards=torch.stack([torch.as_tensor(e.rewards) for e in episodes]).float(),
        split=meta["split"],
        scores=meta["scores"],
    )


def sample_windows(
    tasks: list[TaskData], batch: int, window: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batch` windows of `window` timesteps from episodes drawn uniformly over all tasks'
    episodes, starting anywhere: obs (B, W, D), actions (B, W, A), rewards (B, W)."""
    sizes = torch.tensor([t.num_episodes for t in tasks])
    pick = torch.multinomial(sizes.float(), batch, replacement=True, generator=generator)
    out = []
    for i, task in enumerate(tasks):
        n = int((pick == i).sum())
        if n == 0:
            continue
        t = task.actions.shape[1]
        if window > t:
            raise ValueError(f"window={window} is longer than {task.task}'s episodes ({t} steps)")
        ep = torch.randint(task.num_episodes, (n,), generator=generator)
        start = torch.randint(t - window + 1, (n,), generator=generator)
        idx = start[:, None] + torch.arange(window)
        out.append(
            (
                task.obs[ep[:, None], idx],
                task.actions[ep[:, None], idx],
                task.rewards[ep[:, None], idx],
            )
        )
    return tuple(torch.cat(parts) for parts in zip(*out, strict=True))
