"""Tests of tdm.envs: suite tasks with action repeat, exact save/restore, true-model rollouts
(`simulate`) and the procedurally varied cartpole family."""

import numpy as np
import pytest
from dm_control import suite
from dm_control.suite import cartpole

from tdm.envs import (
    ACTION_REPEAT,
    FAMILY_SIZE,
    FAMILY_TASKS,
    SUITE_TASKS,
    TASKS,
    _family_xml,
    family_params,
    family_split,
    make_env,
)

# (obs_dim, act_dim) from the suite's observation dicts and actuators: cartpole position
# (cart x, pole cos, sin) + velocity (2); reacher position (2) + to_target (2) + velocity (2);
# point_mass position (2) + velocity (2); walker orientations (7 bodies x 2) + height +
# velocity (9), 6 motors; cheetah position without x (8) + velocity (9), 6 motors.
DIMS = {
    "cartpole-swingup": (5, 1),
    "reacher-easy": (6, 2),
    "point_mass-easy": (4, 2),
    "walker-walk": (24, 6),
    "cheetah-run": (17, 6),
}
SMALL_TIER = ["cartpole-swingup", "reacher-easy", "point_mass-easy"]
TWO_VARIANTS = ["cartpole_family-0", "cartpole_family-5"]
ALL = [*SUITE_TASKS, *TWO_VARIANTS]


def random_actions(env, n, seed, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, (n, env.act_dim))


def run(env, actions):
    """Step through `actions`: stacked obs, rewards, dones."""
    steps = [env.step(a) for a in actions]
    return (
        np.stack([s[0] for s in steps]),
        np.array([s[1] for s in steps]),
        np.array([s[2] for s in steps]),
    )


def flat(observation):
    return np.concatenate([np.ravel(observation[k]) for k in sorted(observation)]).astype(
        np.float32
    )


# ------------------------------------------------------------------------------------------------
# building and stepping
# ------------------------------------------------------------------------------------------------


def test_task_ids_and_action_repeats():
    assert TASKS == SUITE_TASKS + FAMILY_TASKS and len(FAMILY_TASKS) == FAMILY_SIZE == 16
    planet = {"cartpole-swingup": 8, "reacher-easy": 4, "walker-walk": 2, "cheetah-run": 4}
    assert {task: ACTION_REPEAT[task] for task in planet} == planet
    assert all(ACTION_REPEAT[task] == 8 for task in FAMILY_TASKS)
    assert set(ACTION_REPEAT) == set(TASKS)


@pytest.mark.parametrize("task", SMALL_TIER + TWO_VARIANTS)
def test_builds_and_steps(task):
    env = make_env(task, seed=0)
    obs_dim, act_dim = DIMS.get(task, DIMS["cartpole-swingup"])
    assert (env.task, env.obs_dim, env.act_dim) == (task, obs_dim, act_dim)
    assert env.action_repeat == ACTION_REPEAT[task]
    assert env.episode_len == 1000 // env.action_repeat
    obs = env.reset()
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32
    for action in random_actions(env, 10, seed=1, low=-2.0, high=2.0):
        obs, reward, done = env.step(action)
        assert obs.shape == (obs_dim,) and obs.dtype == np.float32 and np.isfinite(obs).all()
        assert isinstance(reward, float) and 0.0 <= reward <= env.action_repeat
        assert done is False


def test_action_repeat_override():
    env = make_env("cartpole-swingup", seed=0, action_repeat=2)
    assert (env.action_repeat, env.episode_len) == (2, 500)


@pytest.mark.parametrize("task", SUITE_TASKS)
def test_matches_the_stock_suite_task(task):
    """A whole episode equals dm_control's own environment summed over the action repeat: same
    observations, rewards, and the time limit at the same step (so the added reward sensors
    leave the physics alone)."""
    env = make_env(task, seed=3)
    stock = suite.load(*task.split("-"), task_kwargs={"random": 3})
    np.testing.assert_array_equal(env.reset(), flat(stock.reset().observation))
    actions = random_actions(env, env.episode_len, seed=4)
    for t, action in enumerate(actions):
        obs, reward, done = env.step(action)
        stock_reward = 0.0
        for _ in range(env.action_repeat):
            timestep = stock.step(action)
            stock_reward += timestep.reward
        assert reward == stock_reward
        assert done == timestep.last() == (t == env.episode_len - 1)
        if t % 25 == 0 or done:
            np.testing.assert_array_equal(obs, flat(timestep.observation))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(actions[0])


def test_step_before_reset_and_bad_action():
    env = make_env("reacher-easy", seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset()
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        env.step(np.zeros(3))


def test_unknown_task_and_bad_repeat():
    with pytest.raises(
        ValueError, match="'cartpole-balance'.*cartpole-swingup.*cartpole_family-15"
    ):
        make_env("cartpole-balance", seed=0)
    with pytest.raises(ValueError, match="'cartpole_family-16'"):
        make_env("cartpole_family-16", seed=0)
    for bad in (0, 3, 1.5):
        with pytest.raises(ValueError, match=f"action_repeat={bad}"):
            make_env("cartpole-swingup", seed=0, action_repeat=bad)


# ------------------------------------------------------------------------------------------------
# save / restore
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ALL)
def test_set_state_replays_exactly(task):
    env = make_env(task, seed=0)
    env.reset()
    run(env, random_actions(env, 7, seed=1))
    state = env.get_state()
    actions = random_actions(env, 20, seed=2)
    obs, rewards, dones = run(env, actions)
    run(env, random_actions(env, 5, seed=3))  # move on, then go back
    env.set_state(state)
    np.testing.assert_array_equal(env.get_state(), state)
    obs2, rewards2, dones2 = run(env, actions)
    np.testing.assert_array_equal(obs2, obs)
    np.testing.assert_array_equal(rewards2, rewards)
    np.testing.assert_array_equal(dones2, dones)


def test_set_state_restores_episode_count_and_reacher_target():
    """A state from an earlier episode brings back its decision index (so `done` comes at the
    same step) and the task's per-episode target, which lives in the model, not in the data."""
    env = make_env("reacher-easy", seed=0)
    env.reset()
    run(env, random_actions(env, env.episode_len - 3, seed=1))
    state = env.get_state()
    target = env.physics.named.model.geom_pos["target"].copy()
    obs, rewards, dones = run(env, random_actions(env, 3, seed=2))
    assert dones.tolist() == [False, False, True]
    env.reset()
    assert not np.array_equal(env.physics.named.model.geom_pos["target"], target)
    env.set_state(state)
    np.testing.assert_array_equal(env.physics.named.model.geom_pos["target"], target)
    obs2, rewards2, dones2 = run(env, random_actions(env, 3, seed=2))
    np.testing.assert_array_equal(obs2, obs)
    np.testing.assert_array_equal(dones2, dones)


def test_bad_state_shape():
    env = make_env("cartpole-swingup", seed=0)
    env.reset()
    size = env.get_state().size
    with pytest.raises(ValueError, match=rf"\({size - 1},\).*\({size},\)"):
        env.set_state(np.zeros(size - 1))


# ------------------------------------------------------------------------------------------------
# simulate: true-model rollouts
# ------------------------------------------------------------------------------------------------


def stepped_rewards(env, state, actions):
    """Reference for simulate: set_state, then step() through each action sequence."""
    out = np.zeros(actions.shape[:2])
    for i, sequence in enumerate(actions):
        env.set_state(state)
        out[i] = [env.step(a)[1] for a in sequence]
    return out


@pytest.mark.parametrize("task", ALL)
def test_simulate_matches_step_and_leaves_env_alone(task):
    env = make_env(task, seed=0)
    env.reset()
    # Push one way first: the cartpoles reach the slider's limit (an active constraint).
    run(env, np.ones((10, env.act_dim)))
    state = env.get_state()
    rng = np.random.default_rng(5)
    actions = rng.uniform(-1.5, 1.5, (5, 6, env.act_dim))  # beyond the bounds: both clip
    actions[0] = 1.0

    simulated = env.simulate(state, actions)
    assert simulated.shape == (5, 6) and simulated.dtype == np.float32
    np.testing.assert_array_equal(env.get_state(), state)
    next_action = rng.uniform(-1, 1, env.act_dim)
    after_simulate = env.step(next_action)
    env.set_state(state)
    np.testing.assert_array_equal(env.step(next_action)[0], after_simulate[0])

    reference = stepped_rewards(env, state, actions)
    if task != "reacher-easy":  # its 0/1 reward is 0 here: see the test below
        assert np.ptp(reference) > 0
    np.testing.assert_allclose(simulated, reference, rtol=1e-6, atol=1e-7)


def test_simulate_uses_the_states_reacher_target():
    """A state whose target sits on the finger scores 1 per control step (reacher-easy's sparse
    reward), and the env's own target is left as it was."""
    env = make_env("reacher-easy", seed=0)
    env.reset()
    own_target = env.physics.named.model.geom_pos["target"].copy()
    state = env.get_state()
    # get_state's layout: [integration state, decision index, target geom_pos (x, y, z)]
    state[-3:-1] = env.physics.named.data.geom_xpos["finger", :2]
    actions = np.zeros((2, 3, 2))
    rewards = env.simulate(state, actions)
    np.testing.assert_array_equal(env.physics.named.model.geom_pos["target"], own_target)
    assert rewards[:, 0].tolist() == [env.action_repeat] * 2
    np.testing.assert_allclose(rewards, stepped_rewards(env, state, actions), rtol=1e-6)


def test_simulate_rejects_bad_actions():
    env = make_env("walker-walk", seed=0)
    env.reset()
    state = env.get_state()
    for shape in [(4, 6), (4, 3, 5), (0, 3, 6)]:
        with pytest.raises(ValueError, match="actions has shape"):
            env.simulate(state, np.zeros(shape))


# ------------------------------------------------------------------------------------------------
# the cartpole family
# ------------------------------------------------------------------------------------------------


def test_family_params_deterministic_and_in_range():
    stock_physics = suite.load("cartpole", "swingup").physics  # named views need it alive
    stock = stock_physics.named.model
    stock_length = 2 * stock.geom_size["pole_1", 1]  # capsule size = (radius, half-length)
    stock_mass = stock.body_mass["pole_1"]
    params = [family_params(i) for i in range(FAMILY_SIZE)]
    assert params == [family_params(i) for i in range(FAMILY_SIZE)]
    lengths = np.array([p["pole_length"] for p in params]) / stock_length
    masses = np.array([p["pole_mass"] for p in params]) / stock_mass
    assert ((0.5 <= lengths) & (lengths <= 1.5)).all() and ((0.5 <= masses) & (masses <= 2)).all()
    assert np.ptp(lengths) > 0.75 and np.ptp(masses) > 1.0  # spread over the ranges
    assert len({(p["pole_length"], p["pole_mass"]) for p in params}) == FAMILY_SIZE
    for bad in (-1, FAMILY_SIZE, 1.0):
        with pytest.raises(ValueError, match=f"i={bad}"):
            family_params(bad)


def test_family_variants_build_the_intended_bodies():
    """The built model has the variant's pole (length, mass, and an inertia that follows them);
    the rest is the suite's cartpole."""
    stock_physics = suite.load("cartpole", "swingup").physics
    stock = stock_physics.named.model
    inertias = []
    for task in TWO_VARIANTS:
        params = family_params(FAMILY_TASKS.index(task))
        env = make_env(task, seed=0)
        model = env.physics.named.model
        assert 2 * model.geom_size["pole_1", 1] == pytest.approx(params["pole_length"], abs=1e-12)
        assert model.body_mass["pole_1"] == pytest.approx(params["pole_mass"], abs=1e-12)
        # A capsule of segment length L, radius r about a transverse axis through its centre:
        # more than a thin rod of length L, less than a rod of length L + 2r plus m r^2.
        mass, length, radius = (
            params["pole_mass"],
            params["pole_length"],
            model.geom_size["pole_1", 0],
        )
        inertia = model.body_inertia["pole_1", 0]
        assert (
            mass * length**2 / 12 < inertia < mass * ((length + 2 * radius) ** 2 / 12 + radius**2)
        )
        assert model.body_ipos["pole_1", 2] == pytest.approx(params["pole_length"] / 2)
        np.testing.assert_array_equal(model.body_mass["cart"], stock.body_mass["cart"])
        np.testing.assert_array_equal(model.actuator_gear, stock.actuator_gear)
        inertias.append(model.body_inertia["pole_1", 0])
    assert inertias[0] != inertias[1]


def test_family_with_the_stock_pole_is_the_suite_cartpole():
    physics = cartpole.Physics.from_xml_string(*_family_xml(pole_length=1.0, pole_mass=0.1))
    stock = suite.load("cartpole", "swingup").physics
    for field in ["body_mass", "body_inertia", "body_ipos", "geom_size", "dof_damping", "opt"]:
        if field == "opt":
            assert physics.model.opt.timestep == stock.model.opt.timestep
            assert physics.model.opt.integrator == stock.model.opt.integrator
        else:
            np.testing.assert_array_equal(
                getattr(physics.model, field), getattr(stock.model, field), err_msg=field
            )


def test_family_variants_differ_in_dynamics_and_reward_means_upright():
    actions = np.tile([[1.0], [-1.0]], (10, 1))
    trajectories = []
    for task in TWO_VARIANTS:
        env = make_env(task, seed=0)
        env.reset()
        trajectories.append(run(env, actions)[0])
        # The swing-up reward is "pole upright": ~1 per control step upright, ~0 hanging.
        for angle, low, high in [(0.0, 0.95, 1.0), (np.pi, 0.0, 0.05)]:
            env.physics.data.qpos[:] = [0.0, angle]
            env.physics.data.qvel[:] = 0.0
            env.physics.forward()
            reward = env.simulate(env.get_state(), np.zeros((1, 1, 1)))[0, 0]
            assert low * env.action_repeat <= reward <= high * env.action_repeat
    assert not np.allclose(trajectories[0], trajectories[1], atol=1e-3)


def test_family_split():
    train, heldout = family_split(seed=0)
    assert len(heldout) == 4 and len(train) == FAMILY_SIZE - 4
    assert set(train).isdisjoint(heldout) and set(train) | set(heldout) == set(FAMILY_TASKS)
    assert family_split(seed=0) == (train, heldout)
    assert family_split(seed=1)[1] != heldout
    assert len(family_split(seed=0, heldout=6)[1]) == 6
    for bad in (0, FAMILY_SIZE):
        with pytest.raises(ValueError, match=f"heldout={bad}"):
            family_split(seed=0, heldout=bad)
