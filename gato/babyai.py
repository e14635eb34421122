"""The BabyAI domain (Reed et al. 2022, §3.1 "BabyAI": a grid world with instructions; Table 1).

The expert is the BabyAI bot (`minigrid.utils.baby_ai_bot.BabyAIBot`), which plans on the true
grid. An observation is the agent's 7 × 7 egocentric view, each cell one discrete id combining
object type, colour and state (type · 18 + colour · 3 + state < 198, row-major), its direction,
and the mission as text tokens (trained on, like all text, §2.3); the action is one of
minigrid's 7 discrete actions. The reward is 1 − 0.9 · steps / max_steps on success, 0 on
failure, so a return is also a success flag.
"""

from __future__ import annotations

import string
from functools import partial

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI-* environments)
import numpy as np
from minigrid.utils.baby_ai_bot import BabyAIBot

from gato.tasks import Policy, Task
from gato.tokenizer import Discrete, Text, TextTokenizer

NUM_ACTIONS = 7  # left, right, forward, pickup, drop, toggle, done
MAX_STEPS = 64  # both levels' own limit

# A return every bot episode clears (seeds 0..19: min 0.85 and 0.80); random scores ~0.1–0.2.
EXPERT_MIN_RETURN: dict[str, float] = {
    "babyai/GoToLocal": 0.75,
    "babyai/GoToRedBallGrey": 0.75,
}
_LEVELS = {
    "babyai/GoToLocal": "BabyAI-GoToLocal-v0",
    "babyai/GoToRedBallGrey": "BabyAI-GoToRedBallGrey-v0",
}


class TextMission(gym.ObservationWrapper):
    """minigrid's observation with the mission's space declared as gymnasium's `Text` (what
    Minari stores), the observation itself unchanged."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        spaces = dict(env.observation_space.spaces)
        spaces["mission"] = gym.spaces.Text(200, charset=string.printable)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, obs):
        return obs


def _make_env(level: str, seed: int) -> gym.Env:
    env = TextMission(gym.make(level))
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def _expert(env: gym.Env) -> Policy:
    """The bot, built at the first observation (it reads the grid `reset` made)."""
    bot = None

    def act(obs) -> int:
        nonlocal bot
        if bot is None:
            bot = BabyAIBot(env.unwrapped)
        return int(bot.replan())

    return act


def cell_ids(image: np.ndarray) -> np.ndarray:
    """(7, 7, 3) type / colour / state → 49 ids in [0, 198), row-major."""
    image = np.asarray(image, dtype=np.int64)
    return (image[..., 0] * 18 + image[..., 1] * 3 + image[..., 2]).reshape(-1)


def _observation_entries(obs, text: TextTokenizer | None) -> dict:
    if text is None:
        raise ValueError("a BabyAI observation has a mission: pass the text tokenizer")
    return {
        "cells": Discrete(cell_ids(obs["image"])),
        "direction": Discrete([int(obs["direction"])]),
        "mission": Text(text.encode(str(obs["mission"]))),
    }


def tasks() -> list[Task]:
    return [
        Task(
            name=name,
            domain="babyai",
            make_env=partial(_make_env, level),
            make_expert=_expert,
            max_steps=MAX_STEPS,
            observation_entries=_observation_entries,
            action_entry=lambda a: Discrete([int(a)]),
            action_tokens=1,
            action_kind="discrete",
            env_action=lambda values: int(values[0]),
            num_actions=NUM_ACTIONS,
        )
        for name, level in _LEVELS.items()
    ]
