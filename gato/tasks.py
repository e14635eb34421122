"""The agent tasks of the data mixture and the one interface every domain implements (Reed et al.
2022, §3.1: control, BabyAI, Atari).

A `Task` says how to make its gymnasium environment, its expert, and how one environment
observation and action become Gato entries (gato.tokenizer: `Text`, `Discrete`, `Continuous`,
`Image`). `gato.collect` runs the experts through `Task`s, `gato.eval` runs the model through the
same ones, so data and evaluation see the same observations. The domains live in
`gato.control`, `gato.babyai` and `gato.atari`; `TASKS` gathers them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from gato.tokenizer import Continuous, Discrete, Image, Text, TextTokenizer

Entry = Text | Discrete | Continuous | Image
Policy = Callable[[Any], Any]  # an environment observation -> an environment action


@dataclass(frozen=True)
class Task:
    """One control task.

    name: "<domain>/<id>", e.g. "control/cartpole-swingup", "babyai/GoToLocal", "atari/Breakout".
    domain: "control" | "babyai" | "atari".
    make_env(seed): a fresh gymnasium.Env; `reset(seed=...)` gives the episode.
    make_expert(env): the expert acting in `env` (it may read the env's internals: the BabyAI bot
        reads the grid, a scripted Atari player reads the emulator RAM); a new one per episode.
    max_steps: the episode cap (agent steps) for collection and evaluation alike.
    observation_entries(obs, text): the observation as named entries; `text` is the text
        tokenizer, for instructions.
    image(obs): the observation's frame as uint8 (C, H, W) with H, W multiples of 16, or None for a
        task without images; an `Image` entry has one slot per 16 × 16 patch of it.
    action_entry(action): the environment action as a `Discrete` or `Continuous` entry.
    action_tokens: how many action tokens a timestep has (the decoder emits that many).
    action_kind: "discrete" (ids [0, num_actions)) or "continuous" (values in [-1, 1], not
        companded).
    num_actions: the discrete action count (0 for continuous).
    env_action(values): decoded action values (action_tokens,) → the environment action.
    """

    name: str
    domain: str
    make_env: Callable[[int], gym.Env]
    make_expert: Callable[[gym.Env], Policy]
    max_steps: int
    observation_entries: Callable[[Any, TextTokenizer | None], Mapping[str, Entry]]
    action_entry: Callable[[Any], Discrete | Continuous]
    action_tokens: int
    action_kind: str
    env_action: Callable[[np.ndarray], Any]
    num_actions: int = 0
    image: Callable[[Any], np.ndarray | None] = lambda obs: None


def all_tasks() -> dict[str, Task]:
    """Every task of the three domains, by name."""
    from gato import atari, babyai, control

    tasks = {}
    for module in (control, babyai, atari):
        for task in module.tasks():
            tasks[task.name] = task
    return tasks


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError listing the names there are."""
    tasks = all_tasks()
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}: allowed {sorted(tasks)}")
    return tasks[name]
