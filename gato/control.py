"""The continuous-control domain: proprioceptive tasks with scripted experts (Reed et al. 2022,
§3.1 "Simulated control tasks": DM Control Suite and gymnasium MuJoCo; Table 1).

The paper's control experts are RL agents; here every expert is closed-form control on the true
model, so data collection needs no training:

- LQR (`_lqr_gain`, on a finite-difference linearisation of the MuJoCo model at the upright
  equilibrium) balances the cartpoles and the double pendulum;
- energy shaping (Åström & Furuta 2000) swings the cartpole and the pendulum up, then LQR holds;
- two-link inverse kinematics and a joint PD move the reachers' fingertips onto their targets;
- a saturated PD drives the point mass to its target.

Every task's action is a vector in [-1, 1], mapped affinely onto the environment's actuator
range (`SuiteEnv` for dm_control, `gymnasium.wrappers.RescaleAction` for gymnasium), so the
model's action tokens are never companded (`Continuous(a, compand=False)`, §2.1). Observations
are one float32 vector under the key "observation", companded (eq. 1).

`EXPERT_MIN_RETURN` is, per task, a return every expert episode clears (the tests check it);
the module's `__main__` measures the experts against a uniform-random policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial

os.environ.setdefault("MUJOCO_GL", "disable")  # nothing here renders; no GLFW/EGL probing

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402

from gato.tasks import Policy, Task  # noqa: E402
from gato.tokenizer import Continuous, TextTokenizer  # noqa: E402

# Every dm_control task here has a 1000-control-step episode (cartpole 10 s / 0.01 s; point_mass,
# reacher, pendulum 20 s / 0.02 s) that never terminates early; an action repeat of 4 makes it
# 250 agent decisions.
_SUITE_EPISODE_STEPS = 1000
_SUITE_ACTION_REPEAT = 4

# Per-task return that every expert episode clears (seeds 0..9 measured well above it; a uniform
# random policy scores far below, see the table in `__main__`).
EXPERT_MIN_RETURN: dict[str, float] = {
    "control/cartpole-swingup": 750.0,
    "control/cartpole-balance": 950.0,
    "control/pendulum-swingup": 700.0,
    "control/point_mass-easy": 750.0,
    "control/reacher-easy": 900.0,
    "control/InvertedPendulum-v5": 1000.0,
    "control/InvertedDoublePendulum-v5": 9300.0,
    "control/Reacher-v5": -6.0,
}


class SuiteEnv(gym.Env):
    """A dm_control suite task as a gymnasium.Env.

    The observation is the suite's observation dict flattened in sorted key order (float32); the
    action in [-1, 1] is mapped affinely onto the actuator bounds and held for `action_repeat`
    control steps, whose rewards are summed. `reset(seed=s)` reseeds the task's random state, so
    an episode is a function of its seed; the suite's time limit is a truncation, a discount of 0
    (no task here has one) a termination."""

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, action_repeat: int, seed: int | None = None):
        if action_repeat < 1:
            raise ValueError(f"action_repeat={action_repeat} is not valid: allowed >= 1")
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self.action_repeat = action_repeat
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32, seed=seed)
        self._keys = sorted(self._env.observation_spec())
        size = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32, seed=seed)
        self._done = True

    @property
    def physics(self):
        """The suite's `mujoco.Physics` (read-only use: experts read model constants)."""
        return self._env.physics

    def _observation(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(observation[k]) for k in self._keys]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        self._done = False
        return self._observation(self._env.reset().observation), {}

    def step(self, action):
        if self._done:
            raise RuntimeError("step() after the episode ended: call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action of shape {action.shape} is not valid: allowed {self.action_space.shape}"
            )
        control = self._low + (np.clip(action, -1.0, 1.0) + 1.0) / 2.0 * (self._high - self._low)
        reward = 0.0
        for _ in range(self.action_repeat):
            timestep = self._env.step(control)
            reward += timestep.reward
            if timestep.last():
                break
        terminated = timestep.last() and timestep.discount == 0.0
        truncated = timestep.last() and not terminated
        self._done = terminated or truncated
        return self._observation(timestep.observation), reward, terminated, truncated, {}


# ------------------------------------------------------------------------------------------------
# Control helpers
# ------------------------------------------------------------------------------------------------


def _wrap(angle: np.ndarray | float) -> np.ndarray | float:
    """Angles to [-π, π)."""
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _lqr_gain(
    model: mujoco.MjModel,
    qpos: np.ndarray,
    repeat: int,
    action_scale: float,
    q: np.ndarray,
    r: float,
) -> np.ndarray:
    """The discrete-time LQR gain K (action = −K [Δqpos, qvel]) for an action held `repeat`
    physics steps (control = `action_scale` × action) at the equilibrium `qpos` at rest, on the
    model's transition map linearised by central differences of `mj_step` (any integrator, RK4
    included; hinge and slide joints only)."""
    if model.nq != model.nv or model.na:
        raise ValueError("_lqr_gain supports hinge and slide joints without activations only")
    nx, nu = 2 * model.nv, model.nu
    data = mujoco.MjData(model)

    def transition(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        mujoco.mj_resetData(model, data)
        data.qpos[:], data.qvel[:], data.ctrl[:] = qpos + x[: model.nv], x[model.nv :], u
        for _ in range(repeat):
            mujoco.mj_step(model, data)
        return np.concatenate([data.qpos - qpos, data.qvel])

    eps = 1e-6
    xu = np.zeros(nx + nu)
    jac = np.zeros((nx, nx + nu))
    for i in range(nx + nu):
        step = np.zeros(nx + nu)
        step[i] = eps
        plus, minus = xu + step, xu - step
        jac[:, i] = (transition(plus[:nx], plus[nx:]) - transition(minus[:nx], minus[nx:])) / (
            2 * eps
        )
    a, b = jac[:, :nx], jac[:, nx:] * action_scale
    p = np.diag(q).astype(np.float64)
    for _ in range(100000):  # Riccati iteration to the fixed point
        k = np.linalg.solve(r * np.eye(nu) + b.T @ p @ b, b.T @ p @ a)
        p_next = np.diag(q) + a.T @ p @ (a - b @ k)
        if np.allclose(p_next, p, rtol=1e-10, atol=1e-12):
            return k
        p = p_next
    raise RuntimeError("the LQR Riccati iteration did not converge")


def _two_link_ik(target: np.ndarray, l1: float, l2: float, q: np.ndarray) -> np.ndarray:
    """Joint angles (shoulder, elbow) of a planar two-link arm whose tip is at `target` (clipped
    to the reachable annulus), of the two elbow solutions the one nearer `q`; the shoulder angle
    is unwrapped to the branch of q[0]."""
    r = np.clip(np.linalg.norm(target), abs(l1 - l2) + 1e-6, l1 + l2 - 1e-6)
    cos_elbow = np.clip((r**2 - l1**2 - l2**2) / (2.0 * l1 * l2), -1.0, 1.0)
    best, best_cost = None, np.inf
    for elbow in (np.arccos(cos_elbow), -np.arccos(cos_elbow)):
        shoulder = np.arctan2(target[1], target[0]) - np.arctan2(
            l2 * np.sin(elbow), l1 + l2 * np.cos(elbow)
        )
        shoulder = q[0] + _wrap(shoulder - q[0])
        cost = abs(shoulder - q[0]) + abs(elbow - q[1])
        if cost < best_cost:
            best, best_cost = np.array([shoulder, elbow]), cost
    return best


def _action(u: np.ndarray | float) -> np.ndarray:
    return np.clip(np.atleast_1d(np.asarray(u, dtype=np.float64)), -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Experts
# ------------------------------------------------------------------------------------------------


def _cartpole_expert(env: gym.Env) -> Policy:
    """dm_control cartpole: energy-shaping swing-up (cart acceleration ∝ (E − E_up) θ̇ cos θ,
    which raises the pole energy E to the upright's, plus cart centring), LQR near upright.
    Observation: [x, cos θ, sin θ, ẋ, θ̇] (θ = 0 upright)."""
    unwrapped = env.unwrapped
    model = unwrapped.physics.model.ptr
    pole = model.body("pole_1").id
    mass, com = model.body_mass[pole], model.body_ipos[pole][2]
    inertia = model.body_inertia[pole][1] + mass * com**2  # about the hinge
    gravity = -model.opt.gravity[2]
    total_mass = float(model.body_subtreemass[model.body("cart").id])
    force = model.actuator_gear[0, 0]
    gain = _lqr_gain(model, np.zeros(model.nq), unwrapped.action_repeat, 1.0, *_CARTPOLE_LQR)

    def act(obs: np.ndarray) -> np.ndarray:
        x, cos, sin, x_dot, theta_dot = (float(v) for v in obs)
        theta = np.arctan2(sin, cos)
        if cos > _CARTPOLE_SWITCH_COS:
            return _action(-gain @ np.array([x, theta, x_dot, theta_dot]))
        energy = 0.5 * inertia * theta_dot**2 + mass * gravity * com * (cos - 1.0)
        accel = _CARTPOLE_PUMP * energy * theta_dot * cos - _CARTPOLE_KX * x - _CARTPOLE_KV * x_dot
        return _action(total_mass * accel / force)

    return act


_CARTPOLE_LQR = (np.array([1.0, 20.0, 0.1, 0.1]), 1.0)  # Q diag over (x, θ, ẋ, θ̇), R
_CARTPOLE_SWITCH_COS = 0.85
_CARTPOLE_PUMP = 50.0
_CARTPOLE_KX, _CARTPOLE_KV = 6.0, 6.0  # cart centring during the swing-up


def _pendulum_expert(env: gym.Env) -> Policy:
    """dm_control pendulum: torque-limited energy pumping, τ = sign((E_up − E) θ̇), then LQR near
    upright. Observation: [cos θ, sin θ, θ̇] (θ = 0 upright)."""
    unwrapped = env.unwrapped
    model = unwrapped.physics.model.ptr
    pole = model.body("pole").id
    mass, com = model.body_mass[pole], model.body_ipos[pole][2]
    inertia = model.body_inertia[pole][1] + mass * com**2
    gravity = -model.opt.gravity[2]
    gain = _lqr_gain(model, np.zeros(model.nq), unwrapped.action_repeat, 1.0, *_PENDULUM_LQR)

    def act(obs: np.ndarray) -> np.ndarray:
        cos, sin, theta_dot = (float(v) for v in obs)
        theta = np.arctan2(sin, cos)
        if cos > _PENDULUM_SWITCH_COS:
            return _action(-gain @ np.array([theta, theta_dot]))
        energy = 0.5 * inertia * theta_dot**2 + mass * gravity * com * (cos - 1.0)
        return _action(-_PENDULUM_PUMP * energy * theta_dot)

    return act


_PENDULUM_LQR = (np.array([10.0, 0.1]), 1.0)
_PENDULUM_SWITCH_COS = 0.9
_PENDULUM_PUMP = 100.0


def _point_mass_expert(env: gym.Env) -> Policy:
    """dm_control point_mass-easy: a saturated PD to the target at the origin.
    Observation: [x, y, ẋ, ẏ]."""

    def act(obs: np.ndarray) -> np.ndarray:
        return _action(-_POINT_MASS_KP * obs[:2] - _POINT_MASS_KD * obs[2:])

    return act


_POINT_MASS_KP, _POINT_MASS_KD = 30.0, 10.0


def _reacher_expert(env: gym.Env) -> Policy:
    """dm_control reacher-easy: inverse kinematics of the two-link arm onto the target, a
    saturated joint PD to those angles. Observation: [q1, q2, target − finger (2), q̇1, q̇2]."""
    model = env.unwrapped.physics.model.ptr
    l1 = float(model.body("hand").pos[0])
    l2 = float(model.body("finger").pos[0])

    def act(obs: np.ndarray) -> np.ndarray:
        q, to_target, q_dot = obs[:2], obs[2:4], obs[4:6]
        finger = np.array(
            [
                l1 * np.cos(q[0]) + l2 * np.cos(q[0] + q[1]),
                l1 * np.sin(q[0]) + l2 * np.sin(q[0] + q[1]),
            ]
        )
        goal = _two_link_ik(finger + to_target, l1, l2, q)
        return _action(_REACHER_KP * (goal - q) - _REACHER_KD * q_dot)

    return act


_REACHER_KP, _REACHER_KD = 4.0, 0.2


def _inverted_pendulum_expert(env: gym.Env) -> Policy:
    """gymnasium InvertedPendulum: LQR. Observation: [x, θ, ẋ, θ̇]."""
    unwrapped = env.unwrapped
    model = unwrapped.model
    scale = float(model.actuator_ctrlrange[0, 1])
    gain = _lqr_gain(model, np.zeros(model.nq), unwrapped.frame_skip, scale, *_IP_LQR)

    def act(obs: np.ndarray) -> np.ndarray:
        return _action(-gain @ obs)

    return act


_IP_LQR = (np.array([1.0, 10.0, 0.1, 0.1]), 1.0)


def _double_pendulum_expert(env: gym.Env) -> Policy:
    """gymnasium InvertedDoublePendulum: LQR. Observation: [x, sin θ1, sin θ2, cos θ1, cos θ2,
    ẋ, θ̇1, θ̇2, constraint force] (θ2 relative to the first link)."""
    unwrapped = env.unwrapped
    model = unwrapped.model
    gain = _lqr_gain(model, np.zeros(model.nq), unwrapped.frame_skip, 1.0, *_IDP_LQR)

    def act(obs: np.ndarray) -> np.ndarray:
        theta = np.arctan2(obs[1:3], obs[3:5])
        state = np.concatenate([obs[:1], theta, obs[5:8]])
        return _action(-gain @ state)

    return act


_IDP_LQR = (np.array([1.0, 10.0, 10.0, 0.1, 0.1, 0.1]), 1.0)


def _gym_reacher_expert(env: gym.Env) -> Policy:
    """gymnasium Reacher: inverse kinematics onto the target, a saturated joint PD. Observation:
    [cos q (2), sin q (2), target (2), q̇ (2), fingertip − target (2)]."""
    model = env.unwrapped.model
    l1 = float(model.body("body1").pos[0])
    l2 = float(model.body("fingertip").pos[0])

    def act(obs: np.ndarray) -> np.ndarray:
        q = np.arctan2(obs[2:4], obs[0:2])
        goal = _two_link_ik(obs[4:6], l1, l2, q)
        return _action(_GYM_REACHER_KP * (goal - q) - _GYM_REACHER_KD * obs[6:8])

    return act


_GYM_REACHER_KP, _GYM_REACHER_KD = 0.3, 0.05


# ------------------------------------------------------------------------------------------------
# Tasks
# ------------------------------------------------------------------------------------------------


def _make_suite_env(domain: str, task: str, seed: int) -> gym.Env:
    return SuiteEnv(domain, task, _SUITE_ACTION_REPEAT, seed)


def _make_gym_env(env_id: str, seed: int) -> gym.Env:
    """`gym.make(env_id)` with actions rescaled from [-1, 1] and float32 observations; seeded so
    that unseeded resets are reproducible too."""
    env = gym.make(env_id)
    env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    env = gym.wrappers.DtypeObservation(env, np.float32)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def _observation_entries(obs: np.ndarray, text: TextTokenizer | None) -> dict[str, Continuous]:
    return {"observation": Continuous(np.asarray(obs, dtype=np.float32), compand=True)}


def _action_entry(action: np.ndarray) -> Continuous:
    return Continuous(np.asarray(action, dtype=np.float32), compand=False)


def _env_action(values: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=np.float32), -1.0, 1.0)


def _task(
    name: str,
    make_env: Callable[[int], gym.Env],
    make_expert: Callable[[gym.Env], Policy],
    max_steps: int,
    action_dim: int,
) -> Task:
    return Task(
        name=name,
        domain="control",
        make_env=make_env,
        make_expert=make_expert,
        max_steps=max_steps,
        observation_entries=_observation_entries,
        action_entry=_action_entry,
        action_tokens=action_dim,
        action_kind="continuous",
        env_action=_env_action,
    )


def tasks() -> list[Task]:
    """The control tasks: five dm_control suite tasks (cartpole, pendulum, point mass, reacher)
    and three gymnasium MuJoCo tasks (inverted pendulum, inverted double pendulum, reacher)."""
    suite_steps = _SUITE_EPISODE_STEPS // _SUITE_ACTION_REPEAT
    suite_tasks = [
        ("cartpole", "swingup", _cartpole_expert, 1),
        ("cartpole", "balance", _cartpole_expert, 1),
        ("pendulum", "swingup", _pendulum_expert, 1),
        ("point_mass", "easy", _point_mass_expert, 2),
        ("reacher", "easy", _reacher_expert, 2),
    ]
    gym_tasks = [
        ("InvertedPendulum-v5", _inverted_pendulum_expert, 1000, 1),
        ("InvertedDoublePendulum-v5", _double_pendulum_expert, 1000, 1),
        ("Reacher-v5", _gym_reacher_expert, 50, 2),
    ]
    return [
        _task(
            f"control/{domain}-{task}",
            partial(_make_suite_env, domain, task),
            expert,
            suite_steps,
            dim,
        )
        for domain, task, expert, dim in suite_tasks
    ] + [
        _task(f"control/{env_id}", partial(_make_gym_env, env_id), expert, steps, dim)
        for env_id, expert, steps, dim in gym_tasks
    ]
