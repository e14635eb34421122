"""I-Maze dynamics and reward, and the MiniGrid-Memory wrapper's contract."""

import numpy as np
import pytest

from ald.envs import FORWARD, LEFT, RIGHT, IMaze, MiniGridMemory


def _walk_to_junction(env: IMaze) -> None:
    for _ in range(env.length - 1):
        obs, reward, done, _ = env.step(np.full(env.num_envs, FORWARD))
        assert not done.any() and (reward == 0).all()
    assert (obs[:, 0] == 1).all() and (obs[:, 1:3] == 0).all()  # wall ahead, both arms open


def test_indicator_only_on_the_start_cell_and_corridor_looks_the_same():
    env = IMaze(num_envs=64, length=6, seed=0)
    obs = env.reset()
    assert (obs[:, 3:].sum(1) == 1).all()
    assert {0, 1} == set(obs[:, 3:].argmax(1).tolist())  # both indicators drawn
    assert (obs[:, :3] == [0, 1, 1]).all()
    obs, *_ = env.step(np.full(64, FORWARD))
    assert (obs[:, 3:] == 0).all() and (obs[:, :3] == [0, 1, 1]).all()


def test_turning_into_the_indicated_arm_pays_one_and_the_other_zero():
    env = IMaze(num_envs=64, length=5, seed=1)
    indicator = env.reset()[:, 3:].argmax(1)
    _walk_to_junction(env)
    correct = np.where(indicator == 1, RIGHT, LEFT)
    obs, reward, done, info = env.step(correct)
    assert done.all() and (reward == 1).all() and (info["success"] == 1).all()
    assert (info["episode_length"] == 5).all()  # the shortest solution takes `length` steps
    assert (obs[:, 3:].sum(1) == 1).all()  # same-step autoreset: back on the start cell

    indicator = obs[:, 3:].argmax(1)
    _walk_to_junction(env)
    _, reward, done, info = env.step(np.where(indicator == 1, LEFT, RIGHT))
    assert done.all() and (reward == 0).all() and (info["success"] == 0).all()


def test_side_steps_in_the_corridor_do_nothing_and_the_time_limit_ends_episodes():
    env = IMaze(num_envs=3, length=4, seed=2, time_limit_factor=2)
    env.reset()
    for step in range(8):
        obs, reward, done, info = env.step(np.full(3, LEFT))
        assert (env.position == 0).all() or step == 7
        assert done.all() == (step == 7)
    assert np.isnan(info["episode_return"]).sum() == 0 and (info["success"] == 0).all()


def test_seeded_and_vectorised():
    a, b = IMaze(8, 5, seed=3), IMaze(8, 5, seed=3)
    assert (a.reset() == b.reset()).all()
    rng = np.random.default_rng(0)
    for _ in range(50):
        actions = rng.integers(0, 3, 8)
        for x, y in zip(a.step(actions)[:3], b.step(actions)[:3], strict=True):
            assert (x == y).all()


def test_bad_length_is_rejected():
    with pytest.raises(ValueError, match="task.length"):
        IMaze(2, 1, seed=0)


def test_minigrid_memory_contract():
    env = MiniGridMemory(num_envs=2, env_id="MiniGrid-MemoryS7-v0", seed=0)
    obs = env.reset()
    assert obs.shape == (2, env.obs_dim) and obs.dtype == np.float32
    assert 0 <= obs.min() and obs.max() <= 1
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(env.max_episode_steps + 1):
        obs, reward, done, info = env.step(rng.integers(0, 3, 2))
        ended += int(done.sum())
        assert np.isnan(info["success"][~done]).all() and not np.isnan(info["success"][done]).any()
    assert ended >= 2
    env.close()
