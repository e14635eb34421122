"""dm_control environments for the TDM experiments (Schubert et al. 2023, "A Generalist Dynamics
Model for Control").

`make_env(task, seed, action_repeat=None) -> Env` builds one task:

- the dm_control suite tasks "cartpole-swingup", "reacher-easy", "point_mass-easy" (the small
  tier) and "walker-walk", "cheetah-run", with PlaNet's action repeats (`ACTION_REPEAT`);
- "cartpole_family-<i>", i < FAMILY_SIZE: the paper's generalisation setting at small scale,
  cartpoles whose pole length and mass vary with i (`family_params`), split into training and
  held-out bodies by `family_split`.

`Env.step` sums the suite reward over the action repeat; `Env.get_state` / `Env.set_state`
restore a moment of an episode exactly; `Env.simulate` rolls candidate action sequences through
the true physics for an MPC planner (the true-model upper bound, and the expert that collects
data), in native code with `mujoco.rollout`, and returns the same rewards as `step` would.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("MUJOCO_GL", "disable")  # nothing here renders; no GLFW/EGL probing

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from dm_control import mjcf, suite  # noqa: E402
from dm_control.rl import control  # noqa: E402
from dm_control.suite import cartpole, cheetah, common, point_mass, reacher, walker  # noqa: E402
from dm_control.utils import rewards  # noqa: E402
from lxml import etree  # noqa: E402
from mujoco import rollout  # noqa: E402

SUITE_TASKS: tuple[str, ...] = (
    "cartpole-swingup",
    "reacher-easy",
    "point_mass-easy",
    "walker-walk",
    "cheetah-run",
)
FAMILY_SIZE: int = 16
FAMILY_TASKS: tuple[str, ...] = tuple(f"cartpole_family-{i}" for i in range(FAMILY_SIZE))
TASKS: tuple[str, ...] = SUITE_TASKS + FAMILY_TASKS

# PlaNet's action repeats (Hafner et al. 2019) where PlaNet has the task. PlaNet has no
# point_mass: it gets reacher's 4, the task closest to it (a 2-D reach to a target with the same
# 0.02 s control step and 1000-step episode), i.e. a 0.08 s control period and 250 decisions.
ACTION_REPEAT: dict[str, int] = {
    "cartpole-swingup": 8,
    "reacher-easy": 4,
    "point_mass-easy": 4,
    "walker-walk": 2,
    "cheetah-run": 4,
    **{task: 8 for task in FAMILY_TASKS},  # cartpoles, like cartpole-swingup
}

# Every task here has a 1000-control-step episode: the suite's time limit / control timestep
# (cartpole 10 s / 0.01 s, reacher and point_mass 20 s / 0.02 s, walker 25 s / 0.025 s, cheetah
# 10 s / 0.01 s); none of them terminates early.
_EPISODE_STEPS = 1000

# The pole of the suite's cartpole.xml (default class "pole"): a capsule fromto="0 0 0 0 0 1" of
# radius 0.045 with an explicit mass=".1", so MuJoCo derives its inertia (and centre of mass)
# from the geom's shape: setting the length and the mass moves both.
_POLE_LENGTH = 1.0
_POLE_MASS = 0.1
_FAMILY_LENGTH_SCALE = (0.5, 1.5)  # uniform
_FAMILY_MASS_SCALE = (0.5, 2.0)  # log-uniform

_INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION
_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS
# Native rollout threads: at most 2 (the project's machine has 2 cores).
_SIMULATE_THREADS = min(2, len(os.sched_getaffinity(0)))

# ------------------------------------------------------------------------------------------------
# Batched suite rewards
# ------------------------------------------------------------------------------------------------
#
# `simulate` gets its states from `mujoco.rollout`, which returns qpos / qvel and sensor values
# but no kinematics (xpos, xmat), so each domain gets a few extra frame sensors that copy exactly
# the kinematic values its reward reads, and a numpy version of the suite's `get_reward` that
# works on arrays (N, K, ...). Each mirrors the dm_control 1.0.44 source line by line; the tests
# check it against `step`, which calls the suite's own `get_reward`.

# (task, physics, sensors by name, qpos, qvel, ctrl) -> reward, arrays (N, K, ...) -> (N, K)
_Reward = Callable[
    [Any, Any, dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray], np.ndarray
]


def _cartpole_reward(
    task: Any,
    physics: Any,
    sensor: dict[str, np.ndarray],
    qpos: np.ndarray,
    qvel: np.ndarray,
    ctrl: np.ndarray,
) -> np.ndarray:
    """`cartpole.Balance._get_reward(sparse=False)` for one pole."""
    upright = (sensor["tdm_pole_zaxis"][..., 2] + 1) / 2  # pole_angle_cosine = xmat[pole, "zz"]
    centered = rewards.tolerance(qpos[..., 0], margin=2)
    centered = (1 + centered) / 2
    small_control = rewards.tolerance(
        ctrl[..., 0], margin=1, value_at_margin=0, sigmoid="quadratic"
    )
    small_control = (4 + small_control) / 5
    small_velocity = rewards.tolerance(qvel[..., 1], margin=5)
    small_velocity = (1 + small_velocity) / 2
    return upright * small_control * small_velocity * centered


def _reacher_reward(
    task: Any,
    physics: Any,
    sensor: dict[str, np.ndarray],
    qpos: np.ndarray,
    qvel: np.ndarray,
    ctrl: np.ndarray,
) -> np.ndarray:
    """`reacher.Reacher.get_reward`: 1 when the finger touches the target, else 0."""
    radii = physics.named.model.geom_size[["target", "finger"], 0].sum()
    to_target = sensor["tdm_target_pos"][..., :2] - sensor["tdm_finger_pos"][..., :2]
    return rewards.tolerance(np.linalg.norm(to_target, axis=-1), (0, radii))


def _point_mass_reward(
    task: Any,
    physics: Any,
    sensor: dict[str, np.ndarray],
    qpos: np.ndarray,
    qvel: np.ndarray,
    ctrl: np.ndarray,
) -> np.ndarray:
    """`point_mass.PointMass.get_reward`: near the target x small control."""
    target_size = physics.named.model.geom_size["target", 0]
    distance = np.linalg.norm(sensor["tdm_target_pos"] - sensor["tdm_pointmass_pos"], axis=-1)
    near_target = rewards.tolerance(distance, bounds=(0, target_size), margin=target_size)
    control_reward = rewards.tolerance(ctrl, margin=1, value_at_margin=0, sigmoid="quadratic")
    small_control = (control_reward.mean(axis=-1) + 4) / 5
    return near_target * small_control


def _walker_reward(
    task: Any,
    physics: Any,
    sensor: dict[str, np.ndarray],
    qpos: np.ndarray,
    qvel: np.ndarray,
    ctrl: np.ndarray,
) -> np.ndarray:
    """`walker.PlanarWalker.get_reward`: standing and upright x moving at `move_speed`."""
    stand_height = walker._STAND_HEIGHT
    standing = rewards.tolerance(
        sensor["tdm_torso_pos"][..., 2],
        bounds=(stand_height, float("inf")),
        margin=stand_height / 2,
    )
    upright = (1 + sensor["tdm_torso_zaxis"][..., 2]) / 2
    stand_reward = (3 * standing + upright) / 4
    move_speed = task._move_speed
    if move_speed == 0:
        return stand_reward
    move_reward = rewards.tolerance(
        sensor["torso_subtreelinvel"][..., 0],
        bounds=(move_speed, float("inf")),
        margin=move_speed / 2,
        value_at_margin=0.5,
        sigmoid="linear",
    )
    return stand_reward * (5 * move_reward + 1) / 6


def _cheetah_reward(
    task: Any,
    physics: Any,
    sensor: dict[str, np.ndarray],
    qpos: np.ndarray,
    qvel: np.ndarray,
    ctrl: np.ndarray,
) -> np.ndarray:
    """`cheetah.Cheetah.get_reward`: forward speed, linear up to `_RUN_SPEED`."""
    return rewards.tolerance(
        sensor["torso_subtreelinvel"][..., 0],
        bounds=(cheetah._RUN_SPEED, float("inf")),
        margin=cheetah._RUN_SPEED,
        value_at_margin=0,
        sigmoid="linear",
    )


@dataclasses.dataclass(frozen=True)
class _Domain:
    """What `Env` needs to know about a dm_control domain beyond the suite's own code."""

    module: Any  # the suite module: Physics, get_model_and_assets
    reward: _Reward  # batched `get_reward`
    sensors: tuple[tuple[str, str, str, str], ...] = ()  # (element, name, objtype, objname) to add
    # Model fields that the task's `initialize_episode` changes, saved with the state.
    episode_model_fields: tuple[tuple[str, str], ...] = ()  # (named model field, row name)


_DOMAINS: dict[str, _Domain] = {
    "cartpole": _Domain(
        cartpole, _cartpole_reward, (("framezaxis", "tdm_pole_zaxis", "xbody", "pole_1"),)
    ),
    "reacher": _Domain(
        reacher,
        _reacher_reward,
        (
            ("framepos", "tdm_target_pos", "geom", "target"),
            ("framepos", "tdm_finger_pos", "geom", "finger"),
        ),
        episode_model_fields=(("geom_pos", "target"),),  # the target is drawn every episode
    ),
    "point_mass": _Domain(
        point_mass,
        _point_mass_reward,
        (
            ("framepos", "tdm_target_pos", "geom", "target"),
            ("framepos", "tdm_pointmass_pos", "geom", "pointmass"),
        ),
    ),
    "walker": _Domain(
        walker,
        _walker_reward,
        (
            ("framepos", "tdm_torso_pos", "xbody", "torso"),
            ("framezaxis", "tdm_torso_zaxis", "xbody", "torso"),
        ),
    ),
    "cheetah": _Domain(cheetah, _cheetah_reward),  # reads the model's own torso_subtreelinvel
}


def _with_reward_sensors(xml: str | bytes, domain: str) -> str:
    """The model XML plus the domain's reward sensors (sensors never change the dynamics)."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    section = root.find("sensor")
    if section is None:
        section = etree.SubElement(root, "sensor")
    for element, name, objtype, objname in _DOMAINS[domain].sensors:
        etree.SubElement(section, element, name=name, objtype=objtype, objname=objname)
    return etree.tostring(root, encoding="unicode")


# ------------------------------------------------------------------------------------------------
# The environment
# ------------------------------------------------------------------------------------------------


class Env:
    """One dm_control task with an action repeat, exact state restore and true-model rollouts.

    Observations: the suite's observation dict, keys sorted, flattened, float32. Actions:
    (act_dim,) in [-1, 1] (the suite's bounds), clipped. A decision applies the action for
    `action_repeat` control steps and returns the sum of their rewards (PlaNet's convention);
    `done` is True at the `episode_len`-th decision (the suite's time limit).

    `physics` is the dm_control Physics (with a few added sensors that `simulate` reads).
    """

    task: str
    obs_dim: int
    act_dim: int
    episode_len: int
    action_repeat: int

    def __init__(
        self, task: str, environment: control.Environment, domain: str, action_repeat: int
    ) -> None:
        self.task = task
        self.action_repeat = action_repeat
        self.episode_len = _EPISODE_STEPS // action_repeat
        self.physics = environment.physics
        self._environment = environment
        self._task = environment.task
        self._domain = _DOMAINS[domain]
        self._n_sub_steps = round(environment.control_timestep() / self.physics.timestep())

        spec = environment.action_spec()
        if not (np.all(spec.minimum == -1.0) and np.all(spec.maximum == 1.0)):
            raise ValueError(
                f"{task}: action bounds [{spec.minimum}, {spec.maximum}], expected [-1, 1]"
            )
        self.act_dim = int(spec.shape[0])
        self.obs_dim = sum(int(np.prod(s.shape)) for s in environment.observation_spec().values())

        model = self.physics.model.ptr
        self._n_integration = mujoco.mj_stateSize(model, _INTEGRATION)
        self._model_fields = [
            (getattr(self.physics.named.model, field), row)
            for field, row in self._domain.episode_model_fields
        ]
        n_fields = sum(np.size(field[row]) for field, row in self._model_fields)
        self._state_dim = self._n_integration + 1 + n_fields
        self._sensor_slices = {
            model.sensor(i).name: slice(
                model.sensor_adr[i], model.sensor_adr[i] + model.sensor_dim[i]
            )
            for i in range(model.nsensor)
        }
        self._scratch = mujoco.MjData(model)
        self._rollout_data = [mujoco.MjData(model) for _ in range(_SIMULATE_THREADS)]
        self._t = self.episode_len  # no episode until reset()

    def _observe(self) -> np.ndarray:
        obs = self._task.get_observation(self.physics)
        return np.concatenate([np.asarray(obs[k], np.float64).ravel() for k in sorted(obs)]).astype(
            np.float32
        )

    def _check_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.act_dim,):
            raise ValueError(
                f"action has shape {action.shape}; {self.task} expects ({self.act_dim},)"
            )
        return np.clip(action, -1.0, 1.0)

    def reset(self) -> np.ndarray:
        """Start an episode (the suite's `initialize_episode`, seeded by `make_env`'s seed)."""
        self._environment.reset()
        self._t = 0
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Apply `action` for `action_repeat` control steps: (obs, summed reward, done)."""
        if self._t >= self.episode_len:
            raise RuntimeError(
                f"{self.task}: no episode running (it ended or never began); reset()"
            )
        action = self._check_action(action)
        reward = 0.0
        for _ in range(self.action_repeat):  # dm_control's control.Environment.step
            self._task.before_step(action, self.physics)
            self.physics.step(self._n_sub_steps)
            self._task.after_step(self.physics)
            reward += self._task.get_reward(self.physics)
        self._t += 1
        return self._observe(), float(reward), self._t >= self.episode_len

    def get_state(self) -> np.ndarray:
        """float64 [MuJoCo integration state (time, qpos, qvel, act, ctrl, warm start, ...), the
        decision index, the model fields the task draws per episode (reacher's target)]."""
        state = np.empty(self._state_dim)
        mujoco.mj_getState(
            self.physics.model.ptr,
            self.physics.data.ptr,
            state[: self._n_integration],
            _INTEGRATION,
        )
        state[self._n_integration] = self._t
        state[self._n_integration + 1 :] = self._model_field_values()
        return state

    def _check_state(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self._state_dim,):
            raise ValueError(
                f"state has shape {state.shape}; {self.task} states are ({self._state_dim},), "
                "as returned by get_state()"
            )
        return state

    def _model_field_values(self) -> np.ndarray:
        return np.concatenate(
            [np.zeros(0), *(np.ravel(field[row]) for field, row in self._model_fields)]
        )

    def _set_model_fields(self, values: np.ndarray) -> None:
        start = 0
        for field, row in self._model_fields:
            size = np.size(field[row])
            field[row] = values[start : start + size]
            start += size

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from `get_state`: the following steps repeat exactly."""
        state = self._check_state(state)
        self._set_model_fields(state[self._n_integration + 1 :])
        mujoco.mj_setState(
            self.physics.model.ptr,
            self.physics.data.ptr,
            state[: self._n_integration],
            _INTEGRATION,
        )
        # The step1 quantities (kinematics, ...) that the suite's Euler "legacy step" reuses.
        self.physics.forward()
        self._t = int(state[self._n_integration])

    def simulate(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """True-model rewards (N, H) float32 of action sequences `actions` (N, H, act_dim) from
        `state`: each decision's reward summed over the action repeat, as `step` gives it (the
        time limit is not applied). The env itself is left unchanged.

        All N rollouts run natively in `mujoco.rollout`. Its sensor values at step k are those
        computed at the start of step k, i.e. on the state after step k - 1, which is where the
        suite reads its reward after step k - 1: hence one extra physics step at the end.
        """
        state = self._check_state(state)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 3 or actions.shape[2] != self.act_dim or 0 in actions.shape:
            raise ValueError(
                f"actions has shape {actions.shape}; {self.task} expects (N, H, {self.act_dim}) "
                "with N, H >= 1"
            )
        n, horizon, _ = actions.shape
        model = self.physics.model.ptr
        mujoco.mj_setState(model, self._scratch, state[: self._n_integration], _INTEGRATION)
        initial = np.empty(mujoco.mj_stateSize(model, _FULLPHYSICS))
        mujoco.mj_getState(model, self._scratch, initial, _FULLPHYSICS)

        substeps = self.action_repeat * self._n_sub_steps
        ctrl = np.repeat(np.clip(actions, -1.0, 1.0), substeps, axis=1)
        ctrl = np.concatenate([ctrl, ctrl[:, -1:]], axis=1)
        own_fields = self._model_field_values()
        self._set_model_fields(state[self._n_integration + 1 :])
        try:
            states, sensordata = rollout.rollout(
                model,
                self._rollout_data,
                initial[None],
                ctrl,
                initial_warmstart=self._scratch.qacc_warmstart[None],
                persistent_pool=True,
            )
            # Physics step after each control step, the physics state and sensors there.
            after = np.arange(1, horizon * self.action_repeat + 1) * self._n_sub_steps
            nq, nv = model.nq, model.nv
            per_step = self._domain.reward(
                self._task,
                self.physics,
                {name: sensordata[:, after, s] for name, s in self._sensor_slices.items()},
                states[:, after - 1, 1 : 1 + nq],  # the FULLPHYSICS state starts with time
                states[:, after - 1, 1 + nq : 1 + nq + nv],
                ctrl[:, after - 1],
            )
        finally:
            self._set_model_fields(own_fields)
        per_step = per_step.reshape(n, horizon, self.action_repeat)
        total = per_step[..., 0].copy()
        for k in range(1, self.action_repeat):  # in step()'s order, for the same rounding
            total += per_step[..., k]
        return total.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# The procedurally varied cartpole family
# ------------------------------------------------------------------------------------------------


def _halton(index: int, base: int) -> float:
    """The `index`-th (from 1) element of the van der Corput sequence in `base`, in (0, 1)."""
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


def family_params(i: int) -> dict[str, float]:
    """The pole of `cartpole_family-<i>`: {"pole_length": m, "pole_mass": kg}, as built.

    Variant i takes the (i + 1)-th point of the 2-D Halton sequence (bases 2, 3): a fixed,
    machine-independent generator that spreads the 16 bodies evenly over pole length scale
    [0.5, 1.5] (uniform) x pole mass scale [0.5, 2.0] (log-uniform) of the suite's pole
    (1 m, 0.1 kg), so the held-out bodies lie inside the range spanned by the training ones.
    """
    if not isinstance(i, (int, np.integer)) or not 0 <= i < FAMILY_SIZE:
        raise ValueError(f"family variant i={i!r}; allowed: integers 0..{FAMILY_SIZE - 1}")
    low, high = _FAMILY_LENGTH_SCALE
    length_scale = low + (high - low) * _halton(int(i) + 1, 2)
    low, high = _FAMILY_MASS_SCALE
    mass_scale = low * (high / low) ** _halton(int(i) + 1, 3)
    return {
        "pole_length": round(_POLE_LENGTH * length_scale, 4),
        "pole_mass": round(_POLE_MASS * mass_scale, 4),
    }


def family_split(seed: int, heldout: int = 4) -> tuple[list[str], list[str]]:
    """(training ids, held-out ids) of the cartpole family: `heldout` bodies drawn by `seed`."""
    if not 0 < heldout < FAMILY_SIZE:
        raise ValueError(f"heldout={heldout!r}; allowed: 1..{FAMILY_SIZE - 1}")
    order = np.random.default_rng(seed).permutation(FAMILY_SIZE)
    held = set(order[:heldout].tolist())
    train = [task for i, task in enumerate(FAMILY_TASKS) if i not in held]
    return train, [task for i, task in enumerate(FAMILY_TASKS) if i in held]


def _family_xml(pole_length: float, pole_mass: float) -> tuple[str, dict[str, bytes]]:
    """(XML, assets): the suite's cartpole.xml with the pole's length (fromto) and mass replaced."""
    root = mjcf.from_xml_string(common.read_model("cartpole.xml"), assets=common.ASSETS)
    pole = root.find("geom", "pole_1")
    pole.fromto = [0.0, 0.0, 0.0, 0.0, 0.0, pole_length]
    pole.mass = pole_mass
    return root.to_xml_string(), root.get_assets()


def _family_environment(i: int, seed: int) -> control.Environment:
    """Variant i: the suite's swing-up task (smooth reward) and time limit on the varied body."""
    xml, assets = _family_xml(**family_params(i))
    physics = cartpole.Physics.from_xml_string(_with_reward_sensors(xml, "cartpole"), assets)
    task = cartpole.Balance(swing_up=True, sparse=False, random=seed)
    return control.Environment(physics, task, time_limit=cartpole._DEFAULT_TIME_LIMIT)


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


def make_env(task: str, seed: int, action_repeat: int | None = None) -> Env:
    """Build `task` (one of `TASKS`) seeded by `seed`; action_repeat None -> ACTION_REPEAT[task]."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not a TDM task; allowed: {', '.join(TASKS)}")
    repeat = ACTION_REPEAT[task] if action_repeat is None else action_repeat
    if (
        not isinstance(repeat, (int, np.integer))
        or isinstance(repeat, bool)
        or repeat < 1
        or _EPISODE_STEPS % repeat
    ):
        raise ValueError(
            f"action_repeat={action_repeat!r}; allowed: positive integers that divide the "
            f"{_EPISODE_STEPS}-step episode"
        )
    if task in FAMILY_TASKS:
        domain, environment = "cartpole", _family_environment(FAMILY_TASKS.index(task), seed)
    else:
        domain, name = task.split("-")
        environment = suite.load(domain, name, task_kwargs={"random": seed})
        xml, assets = _DOMAINS[domain].module.get_model_and_assets()
        environment.physics.reload_from_xml_string(_with_reward_sensors(xml, domain), assets)
    return Env(task, environment, domain, int(repeat))
