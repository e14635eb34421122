"""Vectorised environments for the s4rl experiments (Lu et al. 2023, §5).

Every environment is built by `make_env(task_cfg, num_envs, seed)` and follows one contract:

- `reset() -> obs` float32 (B, obs_dim), seeded by the constructor's `seed`.
- `step(actions) -> (obs, reward, done, info)` with SAME-STEP AUTORESET: where `done[i]` is True the
  episode of env i ended at this step (terminated or truncated, both count as done) with this
  step's reward, and `obs[i]` is already the first observation of the next episode. `done` marks
  where a recurrent agent must reset its hidden state (the resettable scan of §3).
- `info["episode_return"]`, `info["episode_length"]`: float arrays (B,), NaN where not done.
  Memory length adds `info["success"]`; the meta tasks add `info["trial_return"]` and
  `info["trial_index"]` (NaN where no trial ended at this step).

Tasks: "memory_length" (bsuite Memory Length, §5.1), "popgym" (POPGym, §5.2), "meta_cartpole"
(projected stateless CartPole, §5.3 (a)) and "meta_dmc" (projected DMControl, §5.3 (b)).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np

from common.config import check_number

Info = dict[str, np.ndarray]


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    """`cfg.get(key, default)` for a DictConfig / dict, `getattr` for other objects."""
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _nan(num_envs: int) -> np.ndarray:
    return np.full(num_envs, np.nan, dtype=np.float64)


class VecEnv:
    """Base class: the attributes the recurrent PPO reads, and per-env episode bookkeeping."""

    num_envs: int
    obs_dim: int
    action_space: gymnasium.spaces.Space
    max_episode_steps: int

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self._episode_return = np.zeros(num_envs, dtype=np.float64)
        self._episode_length = np.zeros(num_envs, dtype=np.int64)

    def _track_episodes(self, reward: np.ndarray, done: np.ndarray) -> Info:
        """Add this step's reward to the running totals; report and zero them where done."""
        self._episode_return += reward
        self._episode_length += 1
        episode_return, episode_length = _nan(self.num_envs), _nan(self.num_envs)
        episode_return[done] = self._episode_return[done]
        episode_length[done] = self._episode_length[done]
        self._episode_return[done] = 0.0
        self._episode_length[done] = 0
        return {"episode_return": episode_return, "episode_length": episode_length}

    def _reset_tracking(self) -> None:
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0

    def reset(self) -> np.ndarray:
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info]:
        raise NotImplementedError

    def close(self) -> None:
        """Release simulator resources (nothing to do for the numpy tasks)."""


# ------------------------------------------------------------------------------------------------
# bsuite Memory Length (§5.1)
# ------------------------------------------------------------------------------------------------


class MemoryLength(VecEnv):
    """bsuite Memory Length (Osband et al. 2020), used in §5.1 of the paper; pure numpy.

    An episode has N + 1 steps, t = 0 … N. Observation
    `[context (num_bits), time_left = 1 - t/N, query_flag, query one-hot (num_bits, if > 1)]`:
    the context bits (±1) are shown only at t = 0; query_flag = 1 only at t = N, where (for
    num_bits > 1) the one-hot names which bit is asked. Two actions: 0 answers −1, 1 answers +1.
    Reward 0 before t = N; at t = N reward +1 for the right answer, −1 for the wrong one, and the
    episode ends (done). Actions before the query have no effect.
    """

    def __init__(self, num_envs: int, seed: int, memory_length: int, num_bits: int) -> None:
        super().__init__(num_envs)
        self.memory_length = memory_length
        self.num_bits = num_bits
        self.obs_dim = num_bits + 2 + (num_bits if num_bits > 1 else 0)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.max_episode_steps = memory_length + 1
        self._rng = np.random.default_rng(seed)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._context = np.zeros((num_envs, num_bits), dtype=np.float32)
        self._query = np.zeros(num_envs, dtype=np.int64)

    def _new_episodes(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        self._t[mask] = 0
        self._context[mask] = self._rng.choice(
            np.array([-1.0, 1.0], np.float32), (n, self.num_bits)
        )
        self._query[mask] = self._rng.integers(0, self.num_bits, n)

    def _observe(self) -> np.ndarray:
        b, n = self.num_bits, self.memory_length
        obs = np.zeros((self.num_envs, self.obs_dim), dtype=np.float32)
        first, last = self._t == 0, self._t == n
        obs[first, :b] = self._context[first]
        obs[:, b] = 1.0 - self._t / n
        obs[:, b + 1] = last
        if b > 1:
            rows = np.nonzero(last)[0]
            obs[rows, b + 2 + self._query[rows]] = 1.0
        return obs

    def reset(self) -> np.ndarray:
        self._new_episodes(np.ones(self.num_envs, dtype=bool))
        self._reset_tracking()
        return self._observe()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info]:
        actions = np.asarray(actions).reshape(self.num_envs)
        done = self._t == self.memory_length
        asked_bit = self._context[np.arange(self.num_envs), self._query]
        correct = actions == (asked_bit > 0)
        reward = np.where(done, np.where(correct, 1.0, -1.0), 0.0).astype(np.float32)
        info = self._track_episodes(reward, done)
        success = _nan(self.num_envs)
        success[done] = correct[done]
        info["success"] = success
        self._t += 1
        self._new_episodes(done)
        return self._observe(), reward, done, info


# ------------------------------------------------------------------------------------------------
# POPGym (§5.2)
# ------------------------------------------------------------------------------------------------


def _check_popgym_id(env_id: str) -> gymnasium.Env:
    import popgym  # noqa: F401  (registers the popgym-* ids)

    if env_id not in gymnasium.registry or not env_id.startswith("popgym-"):
        known = sorted(k for k in gymnasium.registry if k.startswith("popgym-"))
        raise ValueError(f"task.env_id={env_id!r} is not a registered popgym id; known: {known}")
    env = gymnasium.make(env_id, disable_env_checker=True)
    if not isinstance(env.action_space, gymnasium.spaces.Discrete):
        raise ValueError(
            f"task.env_id={env_id!r} has action space {env.action_space}; only popgym tasks with a "
            "Discrete action space are supported"
        )
    return env


class PopGym(VecEnv):
    """POPGym (Morad et al. 2023) tasks as in §5.2: a gymnasium SyncVectorEnv, SAME_STEP autoreset.

    Observations are exactly the env's, flattened (`gymnasium.spaces.flatten`: Discrete /
    MultiDiscrete / Tuple become concatenated one-hots) and cast to float32; no previous action.
    Rewards are POPGym's own, which are normalised so that an episode's return lies in [-1, 1]
    (e.g. RepeatPrevious: ±1/(num_cards − k) per step, at most 1 in total; PositionOnlyCartPole:
    1/max_episode_length per step survived) — the numbers the POPGym / S5 tables report.
    """

    def __init__(self, num_envs: int, seed: int, env_id: str) -> None:
        super().__init__(num_envs)
        probe = _check_popgym_id(env_id)
        self.env_id = env_id
        self.action_space = probe.action_space
        self.obs_dim = int(gymnasium.spaces.flatdim(probe.observation_space))
        self.max_episode_steps = int(
            getattr(probe.unwrapped, "max_episode_length", None) or probe.spec.max_episode_steps
        )
        probe.close()
        self._seed = seed
        self._envs = gymnasium.vector.SyncVectorEnv(
            [self._make_one for _ in range(num_envs)],
            autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
        )

    def _make_one(self) -> gymnasium.Env:
        env = gymnasium.make(self.env_id, disable_env_checker=True)
        return gymnasium.wrappers.FlattenObservation(env)

    def reset(self) -> np.ndarray:
        obs, _ = self._envs.reset(seed=self._seed)
        self._reset_tracking()
        return obs.astype(np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info]:
        actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)
        obs, reward, terminated, truncated, _ = self._envs.step(actions)
        done = np.logical_or(terminated, truncated)
        reward = reward.astype(np.float32)
        info = self._track_episodes(reward, done)
        return obs.astype(np.float32), reward, done, info

    def close(self) -> None:
        self._envs.close()


# ------------------------------------------------------------------------------------------------
# Meta-RL: projected stateless CartPole (§5.3 (a))
# ------------------------------------------------------------------------------------------------


class MetaCartPole(VecEnv):
    """Stateless CartPole with random linear projections, §5.3 (a) of the paper; pure numpy.

    The CartPole is POPGym's PositionOnlyCartPoleEasy (cart position and pole angle only, 200 steps
    at most, reward 1/200 per step survived, so a trial's return lies in (0, 1]), re-implemented
    here with gymnasium CartPole-v1's Euler dynamics so all envs step in one numpy call (a test
    checks step-by-step equality with popgym's env). A meta-episode is `trials` CartPole episodes
    (trials); at its start each env samples an observation projection W ∈ R^{proj_dim×2},
    W_ij ~ N(0, 1/2), and a permutation of the 2 actions, both kept for all its trials.
    Observation: `[W · (x, θ), previous reward, 1 if first step of a trial else 0]`; the previous
    reward is 0 at the start of a meta-episode. `done` is True only when the last trial ends.
    """

    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masscart + masspole
    polemass_length = masspole * length
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    trial_steps = 200

    def __init__(self, num_envs: int, seed: int, trials: int, proj_dim: int) -> None:
        super().__init__(num_envs)
        self.trials, self.proj_dim = trials, proj_dim
        self.obs_dim = proj_dim + 2
        self.action_space = gymnasium.spaces.Discrete(2)
        self.max_episode_steps = trials * self.trial_steps
        self._rng = np.random.default_rng(seed)
        self._state = np.zeros((num_envs, 4), dtype=np.float64)  # x, x_dot, theta, theta_dot
        self._steps = np.zeros(num_envs, dtype=np.int64)  # steps in the current trial
        self._trial = np.zeros(num_envs, dtype=np.int64)  # trial index in the meta-episode
        self._trial_return = np.zeros(num_envs, dtype=np.float64)
        self._proj = np.zeros((num_envs, proj_dim, 2), dtype=np.float64)
        self._flip = np.zeros(num_envs, dtype=bool)  # the action permutation: swap 0 and 1
        self._prev_reward = np.zeros(num_envs, dtype=np.float64)
        self._first = np.ones(num_envs, dtype=bool)

    def _new_trials(self, mask: np.ndarray) -> None:
        self._state[mask] = self._rng.uniform(-0.05, 0.05, (int(mask.sum()), 4))
        self._steps[mask] = 0
        self._trial_return[mask] = 0.0
        self._first[mask] = True

    def _new_meta_episodes(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        self._proj[mask] = self._rng.normal(0.0, math.sqrt(0.5), (n, self.proj_dim, 2))
        self._flip[mask] = self._rng.integers(0, 2, n).astype(bool)
        self._trial[mask] = 0
        self._prev_reward[mask] = 0.0
        self._new_trials(mask)

    def _observe(self) -> np.ndarray:
        position_only = self._state[:, [0, 2]].astype(np.float32).astype(np.float64)
        projected = np.einsum("bij,bj->bi", self._proj, position_only)
        obs = np.concatenate(
            [projected, self._prev_reward[:, None], self._first[:, None].astype(np.float64)], 1
        )
        return obs.astype(np.float32)

    def reset(self) -> np.ndarray:
        self._new_meta_episodes(np.ones(self.num_envs, dtype=bool))
        self._reset_tracking()
        return self._observe()

    def _physics_step(self, push_right: np.ndarray) -> np.ndarray:
        """gymnasium CartPole-v1 Euler step (Barto et al. 1983); returns `terminated`."""
        x, x_dot, theta, theta_dot = self._state.T
        force = np.where(push_right, self.force_mag, -self.force_mag)
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        self._state = np.stack([x, x_dot, theta, theta_dot], 1)
        return (np.abs(x) > self.x_threshold) | (np.abs(theta) > self.theta_threshold)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info]:
        actions = np.asarray(actions).reshape(self.num_envs).astype(bool)
        terminated = self._physics_step(actions ^ self._flip)
        self._steps += 1
        trial_end = terminated | (self._steps >= self.trial_steps)
        reward = np.full(self.num_envs, 1.0 / self.trial_steps, dtype=np.float32)
        self._trial_return += reward
        trial_return, trial_index = _nan(self.num_envs), _nan(self.num_envs)
        trial_return[trial_end] = self._trial_return[trial_end]
        trial_index[trial_end] = self._trial[trial_end]
        self._trial[trial_end] += 1
        done = trial_end & (self._trial >= self.trials)
        info = self._track_episodes(reward, done)
        info["trial_return"], info["trial_index"] = trial_return, trial_index
        self._prev_reward[:] = reward
        self._first[:] = False
        self._new_trials(trial_end)
        self._new_meta_episodes(done)
        return self._observe(), reward, done, info


# ------------------------------------------------------------------------------------------------
# Meta-RL: projected DMControl (§5.3 (b))
# ------------------------------------------------------------------------------------------------

# dm_control suite tasks with flattened observation size <= 12 and action size <= 2 and bounded
# actions (lqr is left out: its action bounds are ±1e10), checked against dm_control 1.0.44:
# "domain-task": (observation size, action size).
DMC_TASKS: dict[str, tuple[int, int]] = {
    "acrobot-swingup": (6, 1),
    "acrobot-swingup_sparse": (6, 1),
    "ball_in_cup-catch": (8, 2),
    "cartpole-balance": (5, 1),
    "cartpole-balance_sparse": (5, 1),
    "cartpole-swingup": (5, 1),
    "cartpole-swingup_sparse": (5, 1),
    "cartpole-two_poles": (8, 1),
    "cartpole-three_poles": (11, 1),
    "finger-spin": (9, 2),
    "finger-turn_easy": (12, 2),
    "finger-turn_hard": (12, 2),
    "pendulum-swingup": (3, 1),
    "point_mass-easy": (4, 2),
    "point_mass-hard": (4, 2),
    "reacher-easy": (6, 2),
    "reacher-hard": (6, 2),
}
DMC_TRAIN_TASKS = [
    "cartpole-balance",
    "cartpole-swingup",
    "pendulum-swingup",
    "point_mass-easy",
    "reacher-easy",
    "acrobot-swingup",
]
DMC_TEST_TASKS = ["cartpole-balance_sparse", "reacher-hard", "point_mass-hard"]


class MetaDMC(VecEnv):
    """DMControl with random linear projections, §5.3 (b) of the paper (dm_control suite tasks).

    At every reset of env i a task is drawn uniformly from the split's list together with an
    observation projection P ∈ R^{obs_dim×d_o}, P_ij ~ N(0, 1/d_o), of the task's flattened
    observation (d_o ≤ 12) and an action projection Q ∈ R^{d_a×act_dim}, Q_ij ~ N(0, 1/act_dim),
    from the agent's action in [-1, 1]^act_dim to the task's d_a ≤ 2 actions, clipped to the task's
    bounds. Observation: `[P · o, previous reward]` (previous reward 0 at the first step). An
    episode lasts exactly `episode_steps` control steps (dm_control's own time limit is lifted),
    then `done`. One episode is one trial: trial_return = episode_return, trial_index = 0;
    `info["task_index"]` is the index of the finished episode's task in the split's list.
    """

    def __init__(
        self,
        num_envs: int,
        seed: int,
        tasks: list[str],
        obs_dim: int,
        act_dim: int,
        episode_steps: int,
    ) -> None:
        super().__init__(num_envs)
        self.tasks = list(tasks)
        self.proj_obs_dim, self.act_dim, self.episode_steps = obs_dim, act_dim, episode_steps
        self.obs_dim = obs_dim + 1
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (act_dim,), dtype=np.float32)
        self.max_episode_steps = episode_steps
        self._rng = np.random.default_rng(seed)
        self._instances: list[dict[int, Any]] = [{} for _ in range(num_envs)]  # lazily loaded
        self._task = np.zeros(num_envs, dtype=np.int64)
        self._obs_proj: list[np.ndarray] = [np.zeros(0)] * num_envs
        self._act_proj: list[np.ndarray] = [np.zeros(0)] * num_envs
        self._act_bounds: list[tuple[np.ndarray, np.ndarray]] = [
            (np.zeros(0), np.zeros(0))
        ] * num_envs
        self._obs = np.zeros((num_envs, obs_dim + 1), dtype=np.float32)
        self._steps = np.zeros(num_envs, dtype=np.int64)

    def _instance(self, i: int, task: int) -> Any:
        if task not in self._instances[i]:
            from dm_control import suite

            domain, name = self.tasks[task].split("-")
            random_state = np.random.RandomState(int(self._rng.integers(2**31)))
            self._instances[i][task] = suite.load(
                domain, name, task_kwargs={"random": random_state, "time_limit": float("inf")}
            )
        return self._instances[i][task]

    def _observe_one(self, i: int, observation: dict, reward: float) -> None:
        flat = np.concatenate(
            [np.asarray(v, dtype=np.float64).ravel() for v in observation.values()]
        )
        self._obs[i, :-1] = self._obs_proj[i] @ flat
        self._obs[i, -1] = reward

    def _reset_one(self, i: int) -> None:
        task = int(self._rng.integers(len(self.tasks)))
        obs_size, act_size = DMC_TASKS[self.tasks[task]]
        self._task[i] = task
        self._obs_proj[i] = self._rng.normal(
            0.0, math.sqrt(1.0 / obs_size), (self.proj_obs_dim, obs_size)
        )
        self._act_proj[i] = self._rng.normal(
            0.0, math.sqrt(1.0 / self.act_dim), (act_size, self.act_dim)
        )
        self._steps[i] = 0
        env = self._instance(i, task)
        self._act_bounds[i] = (env.action_spec().minimum, env.action_spec().maximum)
        time_step = env.reset()
        self._observe_one(i, time_step.observation, 0.0)

    def reset(self) -> np.ndarray:
        for i in range(self.num_envs):
            self._reset_one(i)
        self._reset_tracking()
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info]:
        actions = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1), -1, 1)
        reward = np.zeros(self.num_envs, dtype=np.float32)
        done = np.zeros(self.num_envs, dtype=bool)
        finished_task = _nan(self.num_envs)
        for i in range(self.num_envs):
            env = self._instance(i, int(self._task[i]))
            task_action = np.clip(self._act_proj[i] @ actions[i], *self._act_bounds[i])
            time_step = env.step(task_action)
            reward[i] = time_step.reward or 0.0
            self._steps[i] += 1
            done[i] = time_step.last() or self._steps[i] >= self.episode_steps
            if done[i]:
                finished_task[i] = self._task[i]
                self._reset_one(i)
            else:
                self._observe_one(i, time_step.observation, float(reward[i]))
        info = self._track_episodes(reward, done)
        info["trial_return"] = info["episode_return"].copy()
        info["trial_index"] = np.where(done, 0.0, np.nan)
        info["task_index"] = finished_task
        return self._obs.copy(), reward, done, info


# ------------------------------------------------------------------------------------------------
# Factory
# ------------------------------------------------------------------------------------------------

TASK_NAMES = ("memory_length", "popgym", "meta_cartpole", "meta_dmc")
SIZES = {  # each task's integer keys (all >= 1) and their defaults
    "memory_length": {"memory_length": 10, "num_bits": 1},
    "meta_cartpole": {"trials": 16, "proj_dim": 8},
    "meta_dmc": {"obs_dim": 12, "act_dim": 2, "episode_steps": 1000},
}


def make_env(task_cfg: Any, num_envs: int, seed: int) -> VecEnv:
    """Build the vectorised environment named by `task_cfg.name` (see the module docstring).

    Keys (defaults): memory_length: memory_length (10), num_bits (1); popgym: env_id
    ("popgym-RepeatPreviousEasy-v0"); meta_cartpole: trials (16), proj_dim (8); meta_dmc:
    train_tasks, test_tasks (DMC_TRAIN_TASKS, DMC_TEST_TASKS), split ("train"), obs_dim (12),
    act_dim (2), episode_steps (1000). Bad values raise ValueError before any env is built.
    """
    name = _cfg_get(task_cfg, "name", None)
    check_number({"num_envs": num_envs}, "num_envs", integer=True)
    sizes = {key: _cfg_get(task_cfg, key, d) for key, d in SIZES.get(name, {}).items()}
    for key in sizes:
        check_number(sizes, key, "task.", integer=True)
    if name == "memory_length":
        return MemoryLength(num_envs, seed, **sizes)
    if name == "popgym":
        return PopGym(
            num_envs, seed, str(_cfg_get(task_cfg, "env_id", "popgym-RepeatPreviousEasy-v0"))
        )
    if name == "meta_cartpole":
        return MetaCartPole(num_envs, seed, **sizes)
    if name == "meta_dmc":
        train = list(_cfg_get(task_cfg, "train_tasks", None) or DMC_TRAIN_TASKS)
        test = list(_cfg_get(task_cfg, "test_tasks", None) or DMC_TEST_TASKS)
        for field, tasks in (("task.train_tasks", train), ("task.test_tasks", test)):
            unknown = [t for t in tasks if t not in DMC_TASKS]
            if unknown:
                raise ValueError(
                    f"{field} has {unknown}, not dm_control suite tasks with observation size <= 12"
                    f" and action size <= 2; allowed: {sorted(DMC_TASKS)}"
                )
        overlap = sorted(set(train) & set(test))
        if overlap:
            raise ValueError(f"task.train_tasks and task.test_tasks share {overlap}")
        split = _cfg_get(task_cfg, "split", "train")
        if split not in ("train", "test"):
            raise ValueError(f"task.split={split!r} must be 'train' or 'test'")
        tasks = train if split == "train" else test
        if not tasks:
            raise ValueError(f"task.{split}_tasks is empty")
        return MetaDMC(num_envs, seed, tasks, **sizes)
    raise ValueError(f"task.name={name!r} is not one of {TASK_NAMES}")
