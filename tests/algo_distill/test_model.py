"""The AD transformer: causal, and KV-cache decoding equals recomputing the full context."""

import numpy as np
import pytest
import torch

from algo_distill.envs import DarkGridEnv
from algo_distill.model import build_model
from algo_distill.rollout import in_context_rollout

ENV = {"name": "dark_room", "size": 5, "episode_len": 4}
MODEL = {"hidden": 64, "layers": 2, "heads": 2, "ff": 64, "dropout": 0.0}


def _tokens(batch, length, generator):
    return {
        "obs": torch.randint(25, (batch, length), generator=generator),
        "prev_action": torch.randint(6, (batch, length), generator=generator),
        "prev_reward": torch.randint(2, (batch, length), generator=generator),
        "timestep": torch.arange(length).expand(batch, length) % 4,
    }


def test_causal_and_shapes():
    torch.manual_seed(0)
    model = build_model(MODEL, ENV, context_episodes=2).eval()
    tokens = _tokens(3, 8, torch.Generator().manual_seed(0))
    changed = {k: v.clone() for k, v in tokens.items()}
    changed["obs"][:, 5:] = (changed["obs"][:, 5:] + 1) % 25
    with torch.no_grad():
        out, out_changed = model(tokens), model(changed)
    assert out.shape == (3, 8, 5)
    assert torch.equal(out[:, :5], out_changed[:, :5])
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:])


def test_stepwise_decoding_with_sliding_window_equals_full_forward():
    """Beyond the context window, step decoding (KV cache dropping old steps) equals the
    full-history forward with the sliding-window mask, in float64."""
    torch.manual_seed(0)
    model = build_model(MODEL, ENV, context_episodes=2).double().eval()  # window of 8 steps
    tokens = _tokens(3, 30, torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        state, steps = model.initial_state(3), []
        for t in range(30):
            logits, state = model.step({k: v[:, t] for k, v in tokens.items()}, state)
            steps.append(logits)
        truncated = model({k: v[:, -8:] for k, v in tokens.items()})
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-12, rtol=1e-10)
    # the window really limits the context: the last step differs from a model that sees only
    # the last 8 steps at every layer (the receptive field of 2 layers reaches further back)
    assert not torch.allclose(truncated[:, -1], full[:, -1])


@pytest.mark.parametrize("name", ["dark_room", "key_to_door"])
def test_kv_cache_rollout_equals_full_context_rollout(name):
    torch.manual_seed(0)
    env_cfg = {**ENV, "name": name}
    model = build_model(MODEL, env_cfg, context_episodes=2).double()
    tasks = np.array([[3, 7], [12, 0], [24, 5]])[:, : 2 if name == "key_to_door" else 1]
    results = [
        in_context_rollout(model, DarkGridEnv(name, tasks, 5, 4), episodes=6, seed=5, mode=mode)
        for mode in ("kv_cache", "full_context")
    ]
    assert results[0].shape == (3, 6)
    assert np.array_equal(results[0], results[1])


def test_bad_head_dim_is_rejected():
    with pytest.raises(ValueError, match=r"model.hidden=64 / model.heads=4 must give a head dim"):
        build_model({**MODEL, "heads": 4}, ENV, context_episodes=2)
