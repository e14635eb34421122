"""Dynamics of the Dark environments (paper §5), checked against hand-worked trajectories."""

import numpy as np
import pytest

from algo_distill.envs import DarkGridEnv, all_tasks, split_tasks

STAY, UP, DOWN, LEFT, RIGHT = range(5)


def _cell(row, col, size):
    return row * size + col


def test_dark_room_walls_reward_every_step_and_fixed_length():
    size = 5
    goal = _cell(0, 2, size)  # two cells above the centre (2, 2)
    env = DarkGridEnv("dark_room", np.array([[goal], [goal]]), size, episode_len=4)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [_cell(2, 2, size)] * 2  # start at the centre
    rewards, truncs = [], []
    for action in ([UP, LEFT], [UP, LEFT], [UP, LEFT], [STAY, LEFT]):
        obs, reward, terminated, truncated, _ = env.step(np.array(action))
        rewards.append(reward.tolist())
        truncs.append(truncated.tolist())
        assert not terminated.any()
    # copy 0: reaches the goal after 2 moves, bumps the top wall, stays: reward on steps 2, 3, 4
    assert [r[0] for r in rewards] == [0, 1, 1, 1]
    assert obs[0] == goal
    # copy 1: walks left into the wall and stays at (2, 0): never rewarded
    assert obs[1] == _cell(2, 0, size) and all(r[1] == 0 for r in rewards)
    assert truncs == [[False] * 2] * 3 + [[True] * 2]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.array([STAY, STAY]))


def test_dark_room_hard_rewards_only_the_first_visit():
    size = 5
    env = DarkGridEnv("dark_room_hard", np.array([[_cell(1, 2, size)]]), size, episode_len=5)
    env.reset(seed=0)
    rewards = [env.step(np.array([a]))[1][0] for a in (UP, STAY, DOWN, UP, STAY)]
    assert rewards == [1, 0, 0, 0, 0]


def test_key_to_door_needs_the_key_before_the_door():
    size = 5
    key, door = _cell(0, 0, size), _cell(0, 1, size)
    env = DarkGridEnv("key_to_door", np.array([[key, door]]), size, episode_len=50)
    env.reset(seed=0)
    env.pos[:] = [[0, 2]]  # place the agent right of the door
    rewards = [env.step(np.array([a]))[1][0] for a in (LEFT, LEFT, RIGHT, STAY, LEFT, RIGHT)]
    # door first: nothing; key: 1; door after the key: 1; then nothing more
    assert rewards == [0, 1, 1, 0, 0, 0]


def test_key_to_door_random_start_is_seeded():
    tasks = np.array([[0, 1]] * 64)
    env = DarkGridEnv("key_to_door", tasks, 9, episode_len=50)
    first = env.reset(seed=3)[0].copy()
    assert len(np.unique(first)) > 10  # random starts, not the centre
    assert np.array_equal(env.reset(seed=3)[0], first)
    assert not np.array_equal(env.reset(seed=4)[0], first)


@pytest.mark.parametrize("name", ["dark_room", "dark_room_hard", "key_to_door"])
def test_expert_is_optimal(name):
    """Dark Room optimum from the centre: episode_len + 1 − d for a goal at distance d."""
    size = 5
    length = 20 if name == "key_to_door" else 10  # key then door: at most 8 + 8 steps
    tasks = all_tasks(name, size)
    env = DarkGridEnv(name, tasks, size, length)
    env.reset(seed=0)
    total = np.zeros(len(tasks))
    rng = np.random.default_rng(0)
    for _ in range(length):
        total += env.step(env.expert_actions(rng))[1]
    if name == "dark_room":
        rows, cols = tasks[:, 0] // size, tasks[:, 0] % size
        distance = np.abs(rows - 2) + np.abs(cols - 2)
        assert np.array_equal(total, np.minimum(length, length + 1 - distance))
    else:  # every goal, or key then door, is reachable in time
        assert np.all(total == (1 if name == "dark_room_hard" else 2))


def test_task_split_is_fixed_by_seed_and_disjoint():
    split = split_tasks("dark_room", 9, 8, 5, 1000, seed=0)
    cells = {name: set(tasks[:, 0]) for name, tasks in split.items()}
    assert [len(cells[n]) for n in ("train", "val", "test")] == [68, 5, 8]
    assert not cells["train"] & cells["val"] and not cells["train"] & cells["test"]
    assert not cells["val"] & cells["test"]
    again = split_tasks("dark_room", 9, 8, 5, 1000, seed=0)
    assert all(np.array_equal(again[n], split[n]) for n in split)
    # the test split does not depend on the size of the validation split
    assert np.array_equal(split_tasks("dark_room", 9, 8, 3, 1000, seed=0)["test"], split["test"])
    other = split_tasks("dark_room", 9, 8, 5, 1000, seed=1)
    assert not np.array_equal(other["test"], split["test"])
    assert len(split_tasks("dark_room", 9, 8, 5, 10, seed=0)["train"]) == 10
    assert len(all_tasks("key_to_door", 9)) == 81 * 80
    with pytest.raises(ValueError, match="env.num_test_tasks=81"):
        split_tasks("dark_room", 9, 81, 5, 1000, seed=0)
    with pytest.raises(ValueError, match="env.num_val_tasks=73"):
        split_tasks("dark_room", 9, 8, 73, 1000, seed=0)
