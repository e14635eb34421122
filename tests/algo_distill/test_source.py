"""The source learner (tabular Q-learning) and its episodic backward replay."""

import numpy as np
from omegaconf import OmegaConf

from algo_distill.collect import q_learning, q_update
from algo_distill.envs import DarkGridEnv

STAY, RIGHT = 0, 4


def _source(**overrides):
    source = {
        "alpha": 1.0,
        "gamma": 0.9,
        "q_init": 0.0,
        "epsilon_start": 1.0,
        "epsilon_end": 0.0,
        "epsilon_decay_episodes": 1,
        "backward_replay": False,
    }
    return OmegaConf.create({**source, **overrides})


def test_backward_replay_propagates_a_reward_along_the_whole_path():
    # one learner walks right along a corridor 0 -> 1 -> 2 -> 3, is rewarded on arriving at 3,
    # stays there on the last step of the episode (no bootstrap after it)
    source = _source()
    path = [(0, RIGHT, 0.0, 1, False), (1, RIGHT, 0.0, 2, False), (2, RIGHT, 1.0, 3, False)]
    path.append((3, STAY, 1.0, 3, True))
    episode = [
        (np.array([s]), np.array([a]), np.array([r]), np.array([s2]), last)
        for s, a, r, s2, last in path
    ]
    q = np.zeros((1, 4, 5))
    for transition in episode:  # the online updates: the reward reaches only the last move
        q_update(q, transition, source)
    assert q[0, 0, RIGHT] == q[0, 1, RIGHT] == 0.0 and q[0, 2, RIGHT] == 1.0
    for transition in reversed(episode):  # the backward replay at the episode's end
        q_update(q, transition, source)
    # alpha = 1: Q(3, stay) = 1, Q(2, right) = 1 + γ·1, Q(1, right) = γ·1.9, Q(0, right) = γ²·1.9
    assert np.isclose(q[0, 3, STAY], 1.0)
    assert np.isclose(q[0, 2, RIGHT], 1.9)
    assert np.isclose(q[0, 1, RIGHT], 0.9 * 1.9)
    assert np.isclose(q[0, 0, RIGHT], 0.81 * 1.9)


def test_backward_replay_learns_in_fewer_episodes():
    # 400 learners on a 3×3 room, goal in a corner; one random episode, then greedy
    env_args = ("dark_room", np.full((400, 1), 8), 3, 6)
    returns = {}
    for replay in (False, True):
        data = q_learning(
            DarkGridEnv(*env_args), 4, _source(backward_replay=replay), np.random.default_rng(0)
        )
        returns[replay] = data["returns"].mean(0)
    assert returns[False][0] == returns[True][0]  # same first (random) episode, same seed
    # with the replay, a learner rewarded in the random episode follows that path from the next
    # (greedy) episode on; without it, the reward has moved back only one step per visit
    assert returns[True][1] > 1.5 * returns[False][1]
    assert (returns[True][1:] > returns[False][1:]).all()
