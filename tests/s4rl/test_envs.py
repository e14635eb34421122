"""Tests of s4rl.envs: the vectorised memory-length, POPGym and projected meta-RL environments."""

import gymnasium
import numpy as np
import pytest
from omegaconf import OmegaConf

from s4rl.envs import DMC_TASKS, make_env


def cfg(**kwargs):
    return OmegaConf.create(kwargs)


def rollout(env, actions):
    """Reset, then step through `actions` (T, B, ...); returns stacked obs/reward/done and infos."""
    obs = [env.reset()]
    rewards, dones, infos = [], [], []
    for a in actions:
        o, r, d, info = env.step(a)
        obs.append(o)
        rewards.append(r)
        dones.append(d)
        infos.append(info)
    return np.stack(obs), np.stack(rewards), np.stack(dones), infos


# ------------------------------------------------------------------------------------------------
# memory length
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("right", [True, False])
def test_memory_length_episode(right):
    n, batch = 5, 16
    env = make_env(cfg(name="memory_length", memory_length=n), batch, seed=0)
    assert env.obs_dim == 3 and env.action_space == gymnasium.spaces.Discrete(2)
    assert env.max_episode_steps == n + 1
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (batch, 3)
    context = obs[:, 0].copy()
    assert set(np.unique(context)) == {-1.0, 1.0}
    np.testing.assert_array_equal(obs[:, 1:], [[1.0, 0.0]] * batch)
    answer = (context > 0).astype(np.int64)
    for t in range(n + 1):
        # actions before the query must not matter: send random ones
        action = answer if t == n else np.random.default_rng(t).integers(0, 2, batch)
        if t == n and not right:
            action = 1 - answer
        obs, reward, done, info = env.step(action)
        if t < n:
            assert not done.any() and (reward == 0).all()
            assert np.isnan(info["episode_return"]).all() and np.isnan(info["success"]).all()
            # t+1 is now shown: no context, time left 1 - (t+1)/n, query flag only at t+1 = n
            np.testing.assert_allclose(obs[:, 0], 0.0)
            np.testing.assert_allclose(obs[:, 1], 1.0 - (t + 1) / n, rtol=1e-6)
            np.testing.assert_array_equal(obs[:, 2], float(t + 1 == n))
    assert done.all()
    np.testing.assert_array_equal(reward, 1.0 if right else -1.0)
    np.testing.assert_array_equal(info["success"], 1.0 if right else 0.0)
    np.testing.assert_array_equal(info["episode_return"], 1.0 if right else -1.0)
    np.testing.assert_array_equal(info["episode_length"], n + 1)
    # autoreset: obs is already the t=0 observation of a fresh episode
    assert set(np.unique(obs[:, 0])) <= {-1.0, 1.0} and (obs[:, 0] != 0).all()
    np.testing.assert_array_equal(obs[:, 1:], [[1.0, 0.0]] * batch)


def test_memory_length_mixed_answers_and_several_bits():
    n, bits, batch = 3, 4, 64
    env = make_env(cfg(name="memory_length", memory_length=n, num_bits=bits), batch, seed=1)
    assert env.obs_dim == 2 * bits + 2
    obs = env.reset()
    context = obs[:, :bits].copy()
    for _ in range(n):
        obs, *_ = env.step(np.zeros(batch, dtype=np.int64))
    query = obs[:, bits + 2 :]
    np.testing.assert_array_equal(query.sum(1), 1.0)  # one asked bit, shown only at the query
    asked = context[np.arange(batch), query.argmax(1)]
    answer = (asked > 0).astype(np.int64)
    answer[::2] = 1 - answer[::2]  # even envs answer wrongly
    _, reward, done, info = env.step(answer)
    assert done.all()
    np.testing.assert_array_equal(reward[::2], -1.0)
    np.testing.assert_array_equal(reward[1::2], 1.0)
    np.testing.assert_array_equal(info["success"], np.arange(batch) % 2)


# ------------------------------------------------------------------------------------------------
# determinism under a seed
# ------------------------------------------------------------------------------------------------

SEEDED_TASKS = [
    (cfg(name="memory_length", memory_length=4), 24),
    (cfg(name="popgym", env_id="popgym-AutoencodeEasy-v0"), 24),
    (cfg(name="meta_cartpole", trials=2), 60),
    (cfg(name="meta_dmc", episode_steps=4, train_tasks=["pendulum-swingup", "reacher-easy"]), 10),
]


@pytest.mark.parametrize("task_cfg,steps", SEEDED_TASKS, ids=[c.name for c, _ in SEEDED_TASKS])
def test_same_seed_same_trajectories(task_cfg, steps):
    batch = 3
    envs = [make_env(task_cfg, batch, seed=s) for s in (7, 7, 8)]
    space = envs[0].action_space
    rng = np.random.default_rng(0)
    if isinstance(space, gymnasium.spaces.Discrete):
        actions = rng.integers(0, space.n, (steps, batch))
    else:
        actions = rng.uniform(-1, 1, (steps, batch, *space.shape))
    (o1, r1, d1, _), (o2, r2, d2, _), (o3, *_) = (rollout(e, actions) for e in envs)
    assert o1.dtype == np.float32 and o1.shape == (steps + 1, batch, envs[0].obs_dim)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(d1, d2)
    assert not np.array_equal(o1, o3)


# ------------------------------------------------------------------------------------------------
# popgym
# ------------------------------------------------------------------------------------------------


def test_popgym_obs_and_episode_bookkeeping():
    batch = 4
    env = make_env(cfg(name="popgym", env_id="popgym-CountRecallEasy-v0"), batch, seed=0)
    assert isinstance(env.action_space, gymnasium.spaces.Discrete)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, env.action_space.n, (2 * env.max_episode_steps + 5, batch))
    obs, rewards, dones, infos = rollout(env, actions)
    assert obs.dtype == np.float32 and obs.shape[-1] == env.obs_dim
    assert set(np.unique(obs)) <= {0.0, 1.0}  # MultiDiscrete -> concatenated one-hots
    running, length, finished = np.zeros(batch), np.zeros(batch), 0
    for r, d, info in zip(rewards, dones, infos, strict=True):
        running += r
        length += 1
        np.testing.assert_allclose(info["episode_return"][d], running[d], rtol=1e-6)
        np.testing.assert_array_equal(info["episode_length"][d], length[d])
        assert np.isnan(info["episode_return"][~d]).all()
        assert (info["episode_length"][d] <= env.max_episode_steps).all()
        running[d], length[d] = 0.0, 0.0
        finished += d.sum()
    assert finished >= 2 * batch


def test_popgym_repeat_previous_perfect_play_returns_one():
    """POPGym normalises returns: answering every card correctly scores exactly 1."""
    batch, k = 2, 4
    env = make_env(cfg(name="popgym", env_id="popgym-RepeatPreviousEasy-v0"), batch, seed=3)
    assert env.obs_dim == 4 and env.action_space.n == 4
    history = [env.reset()]
    np.testing.assert_array_equal(history[0].sum(1), 1.0)  # one-hot suit
    for t in range(env.max_episode_steps):
        # the card k steps back in the hand is the one shown k-1 observations before this one
        action = history[-k].argmax(1) if len(history) >= k else np.zeros(batch, dtype=np.int64)
        obs, _, done, info = env.step(action)
        history.append(obs)
        assert done.all() == (t == env.max_episode_steps - 1)
    np.testing.assert_allclose(info["episode_return"], 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# meta cartpole
# ------------------------------------------------------------------------------------------------


def test_meta_cartpole_trials_and_projection():
    trials, batch, proj_dim = 3, 4, 8
    env = make_env(cfg(name="meta_cartpole", trials=trials, proj_dim=proj_dim), batch, seed=0)
    assert env.obs_dim == proj_dim + 2 and env.max_episode_steps == trials * 200
    obs = env.reset()
    np.testing.assert_array_equal(obs[:, -2:], [[0.0, 1.0]] * batch)
    rng = np.random.default_rng(0)
    trial_counts = np.zeros(batch, dtype=np.int64)
    trial_sums = np.zeros(batch)
    projected = [[] for _ in range(batch)]  # projected obs of env i, per meta-episode
    meta_episode = [[obs[i, :proj_dim]] for i in range(batch)]
    while len(projected[0]) < 2 or min(len(p) for p in projected) < 1:
        obs, reward, done, info = env.step(rng.integers(0, 2, batch))
        trial_end = ~np.isnan(info["trial_index"])
        np.testing.assert_array_equal(info["trial_index"][trial_end], trial_counts[trial_end])
        np.testing.assert_array_equal(done, trial_end & (trial_counts == trials - 1))
        np.testing.assert_array_equal(obs[:, -1], trial_end)  # first-step-of-a-trial flag
        np.testing.assert_array_equal(obs[~done, -2], reward[~done])  # previous reward
        np.testing.assert_array_equal(obs[done, -2], 0.0)
        assert (info["trial_return"][trial_end] > 0).all()
        assert (info["trial_return"][trial_end] <= 1.0 + 1e-6).all()
        trial_sums[trial_end] += info["trial_return"][trial_end]
        np.testing.assert_allclose(info["episode_return"][done], trial_sums[done], rtol=1e-5)
        trial_counts[trial_end] += 1
        trial_counts[done], trial_sums[done] = 0, 0.0
        for i in range(batch):
            if done[i]:
                projected[i].append(np.stack(meta_episode[i]))
                meta_episode[i] = []
            meta_episode[i].append(obs[i, :proj_dim])
    # (x, θ) ∈ R² projected by one fixed matrix: a meta-episode's obs span a rank-2 subspace;
    # two meta-episodes together span rank 4 (a new projection was drawn).
    first, second = projected[0][0], projected[0][1]
    assert np.linalg.matrix_rank(first, tol=1e-4) == 2
    assert np.linalg.matrix_rank(np.concatenate([first, second]), tol=1e-4) == 4


@pytest.mark.parametrize("flip", [False, True])
def test_meta_cartpole_matches_popgym_position_only_cartpole(flip):
    """Same dynamics, rewards and trial end as popgym's env; a permuted env swaps the actions."""
    import popgym  # noqa: F401

    reference = gymnasium.make("popgym-PositionOnlyCartPoleEasy-v0", disable_env_checker=True)
    env = make_env(cfg(name="meta_cartpole", trials=2, proj_dim=2), 1, seed=0)
    env.reset()
    ref_obs, _ = reference.reset(seed=5)
    env._state[0] = reference.unwrapped.state  # same start, identity projection, no permutation
    env._proj[0] = np.eye(2)
    env._flip[0] = flip
    rng = np.random.default_rng(1)
    for steps in range(1, 201):
        action = int(rng.integers(0, 2)) if steps % 3 else 1
        ref_obs, ref_reward, terminated, truncated, _ = reference.step(action ^ flip)
        obs, reward, done, info = env.step(np.array([action]))
        assert reward[0] == pytest.approx(ref_reward)
        if terminated or truncated:
            assert info["trial_index"][0] == 0 and info["trial_return"][0] == pytest.approx(
                steps / 200
            )
            break
        np.testing.assert_allclose(obs[0, :2], ref_obs, rtol=1e-6, atol=1e-7)
    else:
        raise AssertionError("the reference episode did not end in 200 steps")


# ------------------------------------------------------------------------------------------------
# meta DMControl
# ------------------------------------------------------------------------------------------------


def test_meta_dmc_shapes_episode_length_and_split():
    train = ["pendulum-swingup", "point_mass-easy", "cartpole-balance"]
    test = ["point_mass-hard"]
    task_cfg = cfg(name="meta_dmc", train_tasks=train, test_tasks=test, episode_steps=3)
    batch = 2
    env = make_env(task_cfg, batch, seed=0)
    assert env.obs_dim == 13 and env.max_episode_steps == 3
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    actions = np.random.default_rng(0).uniform(-1, 1, (30, batch, 2))
    obs, rewards, dones, infos = rollout(env, actions)
    assert obs.dtype == np.float32 and obs.shape == (31, batch, 13)
    assert np.isfinite(obs).all() and rewards.dtype == np.float32
    np.testing.assert_array_equal(dones, np.tile((np.arange(30) % 3 == 2)[:, None], (1, batch)))
    sampled = {train[int(k)] for info in infos for k in info["task_index"] if not np.isnan(k)}
    assert sampled <= set(train) and len(sampled) >= 2
    for d, info in zip(dones, infos, strict=True):
        np.testing.assert_array_equal(info["episode_length"][d], 3)
        np.testing.assert_array_equal(info["trial_index"][d], 0)
    test_env = make_env(OmegaConf.merge(task_cfg, {"split": "test"}), batch, seed=0)
    assert test_env.tasks == test


def test_meta_dmc_projection_resampled_at_reset():
    """pendulum's 3-d observation through one random 12×3 matrix per episode: rank 3 within an
    episode, rank 6 over two episodes."""
    steps = 12
    task_cfg = cfg(name="meta_dmc", train_tasks=["pendulum-swingup"], episode_steps=steps)
    env = make_env(task_cfg, 1, seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (2 * steps, 1, 2))
    obs, *_ = rollout(env, actions)
    projected = obs[:, 0, :12].astype(np.float64)
    first, second = projected[:steps], projected[steps : 2 * steps]
    assert np.linalg.matrix_rank(first, tol=1e-4) == 3
    assert np.linalg.matrix_rank(np.concatenate([first, second]), tol=1e-4) == 6


def test_default_dmc_tasks_are_valid():
    from dm_control import suite

    for name in ["pendulum-swingup", "reacher-hard"]:
        domain, task = name.split("-")
        env = suite.load(domain, task)
        obs_size = sum(int(np.prod(v.shape)) for v in env.observation_spec().values())
        assert (obs_size, env.action_spec().shape[0]) == DMC_TASKS[name]
    for obs_size, act_size in DMC_TASKS.values():
        assert obs_size <= 12 and act_size <= 2


# ------------------------------------------------------------------------------------------------
# bad configs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task_cfg,field",
    [
        (cfg(name="bsuite"), "task.name"),
        (cfg(name="memory_length", memory_length=0), "task.memory_length"),
        (cfg(name="memory_length", num_bits=0), "task.num_bits"),
        (cfg(name="popgym", env_id="popgym-StatelessCartPoleEasy-v0"), "task.env_id"),
        (cfg(name="popgym", env_id="popgym-PositionOnlyPendulumEasy-v0"), "task.env_id"),
        (cfg(name="meta_cartpole", trials=0), "task.trials"),
        (cfg(name="meta_dmc", train_tasks=["humanoid-walk"]), "task.train_tasks"),
        (cfg(name="meta_dmc", test_tasks=["reacher-easy"]), "share"),
        (cfg(name="meta_dmc", split="valid"), "task.split"),
        (cfg(name="meta_dmc", episode_steps=0), "task.episode_steps"),
    ],
)
def test_bad_config_raises(task_cfg, field):
    with pytest.raises(ValueError, match=field):
        make_env(task_cfg, 2, seed=0)


def test_bad_num_envs_raises():
    with pytest.raises(ValueError, match="num_envs"):
        make_env(cfg(name="memory_length"), 0, seed=0)
