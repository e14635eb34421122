"""Gato's control domain: every scripted expert clears its return threshold and beats random."""

import numpy as np
import pytest

from gato import control
from gato.data import random_policy, run_episode

TASKS = control.tasks()


def test_at_least_five_tasks_over_three_embodiments():
    assert len(TASKS) >= 5
    bodies = {t.name.split("/")[1].split("-")[0].replace("Inverted", "") for t in TASKS}
    assert len(bodies) >= 3


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_expert_clears_its_threshold(task):
    env = task.make_env(0)
    for seed in (0, 1):
        ep = run_episode(task, env, task.make_expert(env), seed)
        assert ep.ret >= control.EXPERT_MIN_RETURN[task.name], (seed, ep.ret)
    rand = run_episode(task, env, random_policy(env, 0), 0)
    assert rand.ret < control.EXPERT_MIN_RETURN[task.name]
    entries = task.observation_entries(ep.observation(0), None)
    assert list(entries) == ["observation"]
    assert np.all(np.abs(task.env_action(np.array([2.0] * task.action_tokens))) <= 1.0)


def test_noise_injection_records_the_clean_expert_action():
    """DART rollouts: the recorded action is the expert's action at the recorded state (not the
    executed noisy one), and the noise moves the trajectory off the clean one."""
    task = next(t for t in TASKS if t.name == "control/cartpole-balance")
    env = task.make_env(0)
    expert = task.make_expert(env)
    clean = run_episode(task, env, expert, 3)
    noisy = run_episode(task, env, expert, 3, noise=0.3)
    for t in (0, 10, 100):
        np.testing.assert_allclose(noisy.actions[t], expert(noisy.observation(t)), atol=1e-6)
    assert not np.allclose(noisy.observation(50), clean.observation(50))
    assert noisy.ret < clean.ret
