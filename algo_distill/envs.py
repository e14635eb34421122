"""The Dark environments of Algorithm Distillation (Laskin et al. 2022, §5 "Environments").

Every environment is a gymnasium `VectorEnv` over many tasks at once, stepped with numpy array
operations (no per-environment Python loop). The task (goal, or key and door) is never observed:
the observation is the agent's cell index only. Episodes have a fixed length, so all copies end
together and are reset together (autoreset is disabled: call `reset` after `truncated`).

- dark_room:      start at the centre, reward 1 on every step spent on the goal.
- dark_room_hard: the same, but reward 1 only the first time the goal is reached.
- key_to_door:    random start every episode; reward 1 for reaching the key, then 1 for reaching
                  the door after the key (each once per episode).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

ENVS = ("dark_room", "dark_room_hard", "key_to_door")
# stay, up, down, left, right (the paper's 5 actions: 4 moves + no-op)
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])
NUM_ACTIONS = len(MOVES)


def all_tasks(name: str, size: int) -> np.ndarray:
    """Every task of an environment as cell indices: goals (N, 1) or (key, door) pairs (N, 2)."""
    cells = np.arange(size * size)
    if name in ("dark_room", "dark_room_hard"):
        return cells[:, None]
    if name == "key_to_door":
        key, door = np.meshgrid(cells, cells, indexing="ij")
        pairs = np.stack([key.ravel(), door.ravel()], 1)
        return pairs[pairs[:, 0] != pairs[:, 1]]
    raise ValueError(f"env.name={name!r}; allowed: {ENVS}")


SPLITS = ("train", "val", "test")


def split_tasks(
    name: str, size: int, num_test: int, num_val: int, max_train: int, seed: int
) -> dict[str, np.ndarray]:
    """Disjoint training, validation and test tasks, fixed by `seed` (the paper trains on most
    goals and tests on unseen ones, §5). One seeded permutation: the first `num_test` tasks are
    the test split, the next `num_val` the validation split (quick evaluation and every choice),
    and at most `max_train` of the rest are trained on. The test split is evaluated once, at the
    end, by `algo_distill.eval`."""
    tasks = all_tasks(name, size)
    if not 0 < num_test < len(tasks):
        raise ValueError(f"env.num_test_tasks={num_test}: must lie in [1, {len(tasks) - 1}]")
    if not 0 < num_val < len(tasks) - num_test:
        raise ValueError(
            f"env.num_val_tasks={num_val}: must lie in [1, {len(tasks) - num_test - 1}]"
        )
    order = np.random.default_rng(seed).permutation(len(tasks))
    held_out = num_test + num_val
    return {
        "train": tasks[order[held_out : held_out + max_train]],
        "val": tasks[order[num_test:held_out]],
        "test": tasks[order[:num_test]],
    }


class DarkGridEnv(VectorEnv):
    """A size×size dark grid over `len(tasks)` copies; observation = cell index (row·size + col)."""

    metadata = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(self, name: str, tasks: np.ndarray, size: int, episode_len: int) -> None:
        if name not in ENVS:
            raise ValueError(f"env.name={name!r}; allowed: {ENVS}")
        self.name, self.size, self.episode_len = name, size, episode_len
        self.tasks = np.asarray(tasks, dtype=np.int64).reshape(len(tasks), -1)
        self.num_envs = len(self.tasks)
        self.num_obs = size * size
        # reward phases the agent can tell apart from its own rewards this episode (the tabular
        # source learner's state): before / after the goal (hard); none, key, door (key-to-door)
        self.num_phases = {"dark_room": 1, "dark_room_hard": 2, "key_to_door": 3}[name]
        self.single_observation_space = gym.spaces.Discrete(self.num_obs)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.spaces.MultiDiscrete(np.full(self.num_envs, self.num_obs))
        self.action_space = gym.spaces.MultiDiscrete(np.full(self.num_envs, NUM_ACTIONS))
        self.pos = np.zeros((self.num_envs, 2), dtype=np.int64)
        self.phase = np.zeros(self.num_envs, dtype=np.int64)
        self.t = 0
        self._np_random = np.random.default_rng()

    def _cells(self, column: int) -> np.ndarray:
        cell = self.tasks[:, column]
        return np.stack([cell // self.size, cell % self.size], 1)

    def target(self) -> np.ndarray:
        """(N, 2) cell the expert heads for: the goal, or the key and then the door."""
        if self.name == "key_to_door":
            return np.where(self.phase[:, None] == 0, self._cells(0), self._cells(1))
        return self._cells(0)

    def obs(self) -> np.ndarray:
        return self.pos[:, 0] * self.size + self.pos[:, 1]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._np_random = np.random.default_rng(seed)
        if self.name == "key_to_door":
            self.pos = self._np_random.integers(0, self.size, size=(self.num_envs, 2))
        else:
            self.pos = np.full((self.num_envs, 2), self.size // 2, dtype=np.int64)
        self.phase = np.zeros(self.num_envs, dtype=np.int64)
        self.t = 0
        return self.obs(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.t >= self.episode_len:
            raise RuntimeError("episode over (fixed length): call reset() first")
        self.pos = np.clip(self.pos + MOVES[np.asarray(actions)], 0, self.size - 1)
        self.t += 1
        at_target = (self.pos == self.target()).all(1)
        if self.name == "dark_room":
            reward = at_target.astype(np.float32)
        elif self.name == "dark_room_hard":
            reward = (at_target & (self.phase == 0)).astype(np.float32)
            self.phase = np.maximum(self.phase, at_target)
        else:  # key_to_door: key in phase 0, door in phase 1, nothing after the door
            reward = (at_target & (self.phase < 2)).astype(np.float32)
            self.phase = self.phase + (at_target & (self.phase < 2))
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.full(self.num_envs, self.t == self.episode_len)
        return self.obs(), reward, terminated, truncated, {}

    def expert_actions(self, rng: np.random.Generator) -> np.ndarray:
        """The optimal policy (it knows the task): a uniformly random move among those that
        shorten the Manhattan distance to the target, and stay once there."""
        target = self.target()
        after = np.clip(self.pos[:, None] + MOVES[None], 0, self.size - 1)
        now = np.abs(self.pos - target).sum(1)
        shortens = np.abs(after - target[:, None]).sum(2) < now[:, None]
        shortens[:, 0] |= now == 0
        if self.name == "key_to_door":
            shortens[:, 0] |= self.phase == 2
        scores = rng.random(shortens.shape) * shortens
        return scores.argmax(1)
