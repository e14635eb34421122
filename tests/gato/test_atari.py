"""Gato's Atari domain: padded frames, 36 patch slots per timestep, RAM experts beat random."""

import numpy as np
import pytest
import torch

from gato import atari
from gato.data import observation_row, random_policy, run_episode, tokenize_episode
from gato.tokenizer import Vocab, image_patches


@pytest.mark.parametrize("task", atari.tasks(), ids=lambda t: t.name)
def test_expert_and_tokens(task):
    env = task.make_env(0)
    for seed in (0, 1):
        ep = run_episode(task, env, task.make_expert(env), seed)
        assert ep.ret >= atari.EXPERT_MIN_RETURN[task.name], (seed, ep.ret)
    assert run_episode(task, env, random_policy(env, 0), 0).ret < atari.EXPERT_MIN_RETURN[task.name]
    img = task.image(ep.observation(5))
    assert img.shape == (3, 96, 96) and img.dtype == np.uint8
    assert not img[:, 84:].any() and not img[:, :, 84:].any() and img[:, :84, :84].any()
    patches, grid = image_patches(torch.as_tensor(img)[None])
    assert patches.shape == (1, 36, 3, 16, 16) and grid == (6, 6)
    row = observation_row(task, ep.observation(0), ep.actions[0], Vocab(), None)
    assert len(row) == 38 and row.is_image[:36].all() and not row.is_image[36:].any()
    assert row.loss_mask.tolist() == [False] * 37 + [True]
    short = type(ep)(ep.observations[:6], ep.actions[:5], ep.rewards[:5])
    tokens = tokenize_episode(task, short, Vocab(), None)
    assert tokens.frames.shape == (5, 3, 96, 96)
