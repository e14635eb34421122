import pytest
import torch

from causal_seq.model import ModelConfig, build_model


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_stepwise_acting_equals_full_forward(name):
    """Acting one step at a time (GRU state / transformer KV cache) equals the training forward."""
    torch.manual_seed(0)
    model = build_model(9, 4, ModelConfig(name=name, hidden=64, layers=2, heads=2, max_len=16))
    tokens = torch.randn(5, 12, 9)
    with torch.no_grad():
        full = model(tokens)
        state, steps = model.initial_state(5), []
        for t in range(12):
            logits, state = model.step(tokens[:, t], state)
            steps.append(logits)
    assert full.shape == (5, 12, 4)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_transformer_is_causal():
    torch.manual_seed(0)
    model = build_model(6, 3, ModelConfig(name="transformer", hidden=64, heads=2, max_len=8))
    tokens = torch.randn(2, 8, 6)
    changed = tokens.clone()
    changed[:, 5:] += 1.0
    with torch.no_grad():
        assert torch.allclose(model(tokens)[:, :5], model(changed)[:, :5])
        assert not torch.allclose(model(tokens)[:, 5:], model(changed)[:, 5:])


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="model.name='lstm'"):
        build_model(4, 2, ModelConfig(name="lstm"))
    with pytest.raises(ValueError, match=r"model.hidden=64 / model.heads=4 must give a head dim"):
        build_model(4, 2, ModelConfig(name="transformer", hidden=64, heads=4))
