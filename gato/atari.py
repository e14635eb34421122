"""The Atari domain (Reed et al. 2022, §3.1 "Atari": ALE games, image observations; Table 1).

ale-py ships the ROMs. Frames go through gymnasium's `AtariPreprocessing` (no-op starts, frame
skip 4, 84 × 84 RGB), then are zero-padded to 96 × 96, the 6 × 6 grid of 16 × 16 patches this
package embeds (§2.1); the action is one discrete id. The experts are scripted from the emulator
RAM — the paddle follows the ball — cheap and far above random. Episodes are capped at
`MAX_STEPS` agent steps (4,000 frames) to keep collection and evaluation short on a CPU; the
capped return is what is scored.
"""

from __future__ import annotations

from functools import partial

import ale_py
import gymnasium as gym
import numpy as np

from gato.tasks import Policy, Task
from gato.tokenizer import Discrete, Image, TextTokenizer

gym.register_envs(ale_py)

MAX_STEPS = 1000
FRAME = 96  # padded frame side: 6 × 6 patches
NUM_PATCHES = (FRAME // 16) ** 2

# A capped return every expert episode clears (seeds 0..4 measured); random: ~1 and ~-20.
EXPERT_MIN_RETURN: dict[str, float] = {"atari/Breakout": 10.0, "atari/Pong": -5.0}


def _make_env(game: str, seed: int) -> gym.Env:
    env = gym.make(
        f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False
    )
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=30,
        frame_skip=4,
        screen_size=84,
        grayscale_obs=False,
        terminal_on_life_loss=False,
    )
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def _breakout_expert(env: gym.Env) -> Policy:
    """FIRE when no ball is in play, else move the paddle (RAM 72) under the ball (RAM 99)."""
    ale = env.unwrapped.ale

    def act(obs) -> int:
        ram = ale.getRAM()
        ball_x, ball_y, paddle_x = int(ram[99]), int(ram[101]), int(ram[72])
        if ball_y == 0:
            return 1  # FIRE
        error = ball_x - (paddle_x + 8)
        if abs(error) <= 3:
            return 0
        return 2 if error > 0 else 3  # RIGHT, LEFT

    return act


def _pong_expert(env: gym.Env) -> Policy:
    """Move the right paddle (RAM 51) towards the ball's height (RAM 54)."""
    ale = env.unwrapped.ale

    def act(obs) -> int:
        ram = ale.getRAM()
        ball_y, paddle_y = int(ram[54]), int(ram[51])
        if ball_y == 0:
            return 1  # FIRE (serve)
        error = ball_y - (paddle_y + 8)
        if abs(error) <= 2:
            return 0
        return 2 if error < 0 else 3  # UP (RIGHT), DOWN (LEFT)

    return act


def frame(obs: np.ndarray) -> np.ndarray:
    """(84, 84, 3) uint8 → (3, 96, 96) uint8, zero-padded at the bottom and right."""
    out = np.zeros((3, FRAME, FRAME), np.uint8)
    out[:, :84, :84] = np.asarray(obs, np.uint8).transpose(2, 0, 1)
    return out


def _observation_entries(obs, text: TextTokenizer | None) -> dict:
    return {"frame": Image(NUM_PATCHES)}


def tasks() -> list[Task]:
    games = {"Breakout": (_breakout_expert, 4), "Pong": (_pong_expert, 6)}
    return [
        Task(
            name=f"atari/{game}",
            domain="atari",
            make_env=partial(_make_env, game),
            make_expert=expert,
            max_steps=MAX_STEPS,
            observation_entries=_observation_entries,
            action_entry=lambda a: Discrete([int(a)]),
            action_tokens=1,
            action_kind="discrete",
            env_action=lambda values: int(values[0]),
            num_actions=n,
            image=frame,
        )
        for game, (expert, n) in games.items()
    ]
