"""Vectorised memory tasks for ALD (Parisotto & Salakhutdinov 2021, §5.1).

One contract for every task, built by `make_env(task_cfg, num_envs, seed)`:

- `reset() -> obs` float32 (B, obs_dim).
- `step(actions) -> (obs, reward, done, info)` with same-step autoreset: where `done[i]` the
  episode of env i ended at this step (reached a goal or hit the time limit) with this step's
  reward, and `obs[i]` is already the first observation of its next episode.
- `info["episode_return"]`, `info["episode_length"]`, `info["success"]`: float (B,), NaN where
  no episode ended.

Tasks: "imaze" (written here, numpy) and "minigrid_memory" (MiniGrid-Memory* from `minigrid`).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

Info = dict[str, np.ndarray]
EPISODE_KEYS = ("episode_return", "episode_length", "success")


def _no_episode_ended(num_envs: int) -> Info:
    """The info arrays of a step at which no episode ended (NaN everywhere)."""
    return {key: np.full(num_envs, np.nan) for key in EPISODE_KEYS}


# I-Maze actions (the corridor is walked forward; left / right choose an arm at the junction).
FORWARD, LEFT, RIGHT = 0, 1, 2


class IMaze:
    """I-Maze: a corridor of `length` cells ending in a junction with a left and a right arm.

    The indicator (one of two colours, drawn per episode) is visible only on the start cell, and
    says which arm holds the reward: the agent must carry one bit over `length` steps (the task
    of the paper's Fig. 3, after Oh et al. 2016). Observation (5 floats): [wall ahead, wall on
    the left, wall on the right, indicator is A, indicator is B]; in the corridor every cell
    looks the same, at the junction both sides are open. Actions: forward, left, right (moves
    into a wall do nothing). Reward 1 for entering the indicated arm, 0 for the other arm;
    either ends the episode, as does the time limit `time_limit_factor · length` steps.
    The shortest solution takes `length` steps (length − 1 forward, one turn).
    """

    obs_dim = 5
    num_actions = 3

    def __init__(self, num_envs: int, length: int, seed: int, time_limit_factor: int = 4) -> None:
        if length < 2:
            raise ValueError(f"task.length={length} must be >= 2 (a corridor and a junction)")
        self.num_envs, self.length = num_envs, length
        self.max_episode_steps = time_limit_factor * length
        self.rng = np.random.default_rng(seed)
        self.position = np.zeros(num_envs, dtype=np.int64)  # cells walked down the corridor
        self.indicator = np.zeros(num_envs, dtype=np.int64)  # 0: left arm rewarded, 1: right
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.episode_return = np.zeros(num_envs)

    def _observe(self) -> np.ndarray:
        obs = np.zeros((self.num_envs, self.obs_dim), dtype=np.float32)
        at_junction = self.position == self.length - 1
        obs[:, 0] = at_junction
        obs[:, 1] = ~at_junction
        obs[:, 2] = ~at_junction
        at_start = self.position == 0
        obs[at_start, 3 + self.indicator[at_start]] = 1.0
        return obs

    def _new_episodes(self, where: np.ndarray) -> None:
        self.position[where] = 0
        self.steps[where] = 0
        self.episode_return[where] = 0.0
        self.indicator[where] = self.rng.integers(0, 2, size=int(where.sum()))

    def reset(self) -> np.ndarray:
        self._new_episodes(np.ones(self.num_envs, dtype=bool))
        return self._observe()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info]:
        actions = np.asarray(actions)
        at_junction = self.position == self.length - 1
        self.position += (actions == FORWARD) & ~at_junction
        turned = at_junction & (actions != FORWARD)
        correct = turned & ((actions == RIGHT) == (self.indicator == 1))
        reward = correct.astype(np.float32)
        self.steps += 1
        self.episode_return += reward
        done = turned | (self.steps >= self.max_episode_steps)
        info = _no_episode_ended(self.num_envs)
        info["episode_return"][done] = self.episode_return[done]
        info["episode_length"][done] = self.steps[done]
        info["success"][done] = correct[done]
        self._new_episodes(done)
        return self._observe(), reward, done, info

    def close(self) -> None:
        """Nothing to release."""


class MiniGridMemory:
    """MiniGrid-Memory* (`minigrid`): remember the object seen in the start room, walk the
    corridor and touch the matching one. Observation: the 7×7×3 egocentric grid scaled to
    [0, 1] plus the agent's direction one-hot (151 floats); actions: left, right, forward
    (the three the task needs). Reward 1 − 0.9·steps/max_steps on success, 0 otherwise."""

    num_actions = 3
    obs_dim = 7 * 7 * 3 + 4

    def __init__(self, num_envs: int, env_id: str, seed: int) -> None:
        import minigrid  # noqa: F401  (registers the MiniGrid ids)

        self.num_envs = num_envs
        self.envs = gymnasium.vector.SyncVectorEnv(
            [lambda: gymnasium.make(env_id) for _ in range(num_envs)],
            autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
        )
        self.max_episode_steps = int(self.envs.envs[0].unwrapped.max_steps)
        self.seed = seed
        self.episode_return = np.zeros(num_envs)
        self.steps = np.zeros(num_envs, dtype=np.int64)

    @staticmethod
    def _flatten(obs: dict[str, np.ndarray]) -> np.ndarray:
        image = obs["image"].reshape(obs["image"].shape[0], -1).astype(np.float32) / 10.0
        direction = np.eye(4, dtype=np.float32)[obs["direction"]]
        return np.concatenate([image, direction], axis=1)

    def reset(self) -> np.ndarray:
        obs, _ = self.envs.reset(seed=self.seed)
        self.episode_return[:] = 0.0
        self.steps[:] = 0
        return self._flatten(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info]:
        obs, reward, terminated, truncated, _ = self.envs.step(np.asarray(actions))
        done = terminated | truncated
        self.episode_return += reward
        self.steps += 1
        info = _no_episode_ended(self.num_envs)
        info["episode_return"][done] = self.episode_return[done]
        info["episode_length"][done] = self.steps[done]
        info["success"][done] = reward[done] > 0
        self.episode_return[done] = 0.0
        self.steps[done] = 0
        return self._flatten(obs), reward.astype(np.float32), done, info

    def close(self) -> None:
        self.envs.close()


TASKS = ("imaze", "minigrid_memory")


def make_env(task: Any, num_envs: int, seed: int) -> IMaze | MiniGridMemory:
    """Build the task named by `task.name` with `num_envs` copies, seeded by `seed`."""
    if task.name == "imaze":
        return IMaze(num_envs, task.length, seed, task.time_limit_factor)
    if task.name == "minigrid_memory":
        return MiniGridMemory(num_envs, task.env_id, seed)
    raise ValueError(f"task.name={task.name!r} is not valid: one of {TASKS}")
