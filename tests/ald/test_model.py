"""GTrXL memory = one pass with the equivalent span; acting = sequence mode; LSTM resets."""

import pytest
import torch

from ald.model import GRUGate, GTrXL, LSTMNet, rope


def _inputs(batch=3, steps=30, obs_dim=5):
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, steps, obs_dim, generator=gen, dtype=torch.float64)
    first = torch.rand(batch, steps, generator=gen) < 0.1
    return obs, first


@pytest.mark.parametrize("segment", [1, 7, 10])
def test_gtrxl_segments_with_memory_equal_one_pass(segment):
    """Transformer-XL's recurrence: segments of any length with the stop-gradient memory of the
    previous ones give the outputs of one pass in which each step sees the M steps before it."""
    torch.manual_seed(0)
    net = GTrXL(5, 3, width=64, layers=2, heads=2, memory=12).double()
    obs, first = _inputs()
    logits, values, final = net(obs, first, net.initial_state(3).double())
    state, parts = net.initial_state(3).double(), []
    for start in range(0, 30, segment):
        out, value, state = net(
            obs[:, start : start + segment], first[:, start : start + segment], state
        )
        parts.append((out, value))
    torch.testing.assert_close(torch.cat([p[0] for p in parts], 1), logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.cat([p[1] for p in parts], 1), values, atol=1e-10, rtol=0)
    torch.testing.assert_close(state, final, atol=1e-10, rtol=0)


def test_gtrxl_span_is_the_memory_length():
    """A change at step 0 reaches step t only within the span (through `layers` hops)."""
    torch.manual_seed(0)
    net = GTrXL(5, 3, width=64, layers=1, heads=2, memory=4).double()
    obs, first = _inputs(batch=1, steps=10)
    changed = obs.clone()
    changed[:, 0] += 1.0
    a = net(obs, first, net.initial_state(1).double())[0]
    b = net(changed, first, net.initial_state(1).double())[0]
    moved = (a - b).abs().amax(-1)[0] > 1e-12
    assert moved[:5].all() and not moved[5:].any()


def test_state_after_returns_the_state_of_a_prefix():
    torch.manual_seed(0)
    for net in (GTrXL(5, 3, 64, 2, 2, 8).double(), LSTMNet(5, 3, 16).double()):
        obs, first = _inputs(steps=12)
        s0 = net.initial_state(3).double()
        _, _, prefix_state = net(obs[:, :9], first[:, :9], s0)
        _, _, state = net(obs, first, s0, state_after=9)
        torch.testing.assert_close(state, prefix_state, atol=1e-12, rtol=0)


def test_lstm_resets_its_state_at_episode_starts():
    torch.manual_seed(0)
    net = LSTMNet(5, 3, 16).double()
    obs, _ = _inputs(batch=2, steps=12)
    first = torch.zeros(2, 12, dtype=torch.bool)
    first[:, 7] = True
    whole = net(obs, first, net.initial_state(2).double())[0]
    alone = net(obs[:, 7:], first[:, 7:], net.initial_state(2).double())[0]
    torch.testing.assert_close(whole[:, 7:], alone, atol=1e-12, rtol=0)


def test_gru_gate_starts_near_identity_and_rope_is_relative():
    gate = GRUGate(64, bias=2.0).double()
    for p in gate.parameters():
        torch.nn.init.zeros_(p)
    x, y = torch.randn(4, 64, dtype=torch.float64), torch.randn(4, 64, dtype=torch.float64)
    z = torch.sigmoid(torch.tensor(-2.0, dtype=torch.float64))  # z = σ(0 − b_g): mostly carry x
    torch.testing.assert_close(gate(x, y), (1 - z) * x, atol=1e-12, rtol=0)
    q, k = torch.randn(2, 32, dtype=torch.float64), torch.randn(2, 32, dtype=torch.float64)
    pos = torch.tensor([3, 1])
    score = (rope(q[:1], pos[:1]) * rope(k[1:], pos[1:])).sum()
    shifted = (rope(q[:1], pos[:1] + 100) * rope(k[1:], pos[1:] + 100)).sum()
    torch.testing.assert_close(score, shifted, atol=1e-10, rtol=0)
