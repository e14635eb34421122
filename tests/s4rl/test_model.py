"""The memory cores: parallel mode = recurrent mode, resets = separate episodes, carried state =
one long rollout, the HiPPO-N initialisation, and the actor-critic heads."""

import pytest
import torch
from omegaconf import OmegaConf

from s4rl.model import ActorCritic, build_core, hippo_n

CORES = {
    "s5": dict(name="s5", state_size=16, blocks=2, resettable=True, scan="reference"),
    "s5_chunked": dict(name="s5", state_size=16, blocks=2, resettable=True, scan="chunked"),
    "lstm": dict(name="lstm"),
    "gru": dict(name="gru"),
    "transformer": dict(name="transformer", heads=1, window=6),
}
WIDTH = 32


def make_core(key: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = OmegaConf.create({"width": WIDTH, "layers": 2, **CORES[key], **overrides})
    return build_core(cfg).double()


def random_state(core: torch.nn.Module, batch: int) -> torch.Tensor:
    """A non-zero carried state (the transformer's: random past inputs, all 'same episode')."""
    state = core.initial_state(batch)
    noise = 0.3 * torch.randn_like(state)
    if state.shape[-1] == WIDTH + 1:  # transformer: last channel is the valid flag
        noise[..., -1] = 1.0
    return state + noise


def step_loop(core, x, reset, state):
    outputs = []
    for t in range(x.shape[1]):
        y, state = core.step(x[:, t], reset[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, 1), state


@pytest.mark.parametrize("key", CORES)
def test_parallel_equals_recurrent_values_and_gradients(key):
    core = make_core(key)
    torch.manual_seed(1)
    x = torch.randn(3, 13, WIDTH, dtype=torch.float64)
    reset = torch.rand(3, 13) < 0.2
    state = random_state(core, 3)
    weights = torch.randn(3, 13, WIDTH, dtype=torch.float64)

    y_par, s_par = core(x, reset, state)
    grads_par = torch.autograd.grad((y_par * weights).sum(), list(core.parameters()))
    y_rec, s_rec = step_loop(core, x, reset, state)
    grads_rec = torch.autograd.grad((y_rec * weights).sum(), list(core.parameters()))

    torch.testing.assert_close(y_par, y_rec, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_par, s_rec, rtol=1e-10, atol=1e-10)
    for g_par, g_rec in zip(grads_par, grads_rec, strict=True):
        torch.testing.assert_close(g_par, g_rec, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("key", CORES)
def test_batch_with_resets_equals_separate_episodes(key):
    """One (1, T) sequence holding three episodes = each episode run alone from a fresh state."""
    core = make_core(key)
    torch.manual_seed(2)
    lengths = [5, 1, 8]
    x = torch.randn(1, sum(lengths), WIDTH, dtype=torch.float64)
    reset = torch.zeros(1, sum(lengths), dtype=torch.bool)
    starts = [0, 5, 6]
    reset[0, starts] = True
    y, _ = core(x, reset, random_state(core, 1))  # reset at t=0 discards the carried state
    for start, length in zip(starts, lengths, strict=True):
        piece = x[:, start : start + length]
        alone, _ = core(piece, torch.zeros(1, length, dtype=torch.bool), core.initial_state(1))
        torch.testing.assert_close(y[:, start : start + length], alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("key", CORES)
def test_state_carried_over_rollout_boundary_equals_one_long_rollout(key):
    core = make_core(key)
    torch.manual_seed(3)
    x = torch.randn(2, 20, WIDTH, dtype=torch.float64)
    reset = torch.rand(2, 20) < 0.15
    state = random_state(core, 2)
    y_long, s_long = core(x, reset, state)
    y1, s1 = core(x[:, :7], reset[:, :7], state)
    y2, s2 = core(x[:, 7:], reset[:, 7:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_long, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_long, rtol=1e-10, atol=1e-10)


def test_s5_without_resets_leaks_state_across_episodes():
    torch.manual_seed(4)
    x = torch.randn(2, 10, WIDTH, dtype=torch.float64)
    reset = torch.zeros(2, 10, dtype=torch.bool)
    reset[:, 4] = True
    with_resets = make_core("s5")
    leaking = make_core("s5", resettable=False)
    leaking.load_state_dict(with_resets.state_dict())
    y_r, _ = with_resets(x, reset, with_resets.initial_state(2))
    y_l, _ = leaking(x, reset, leaking.initial_state(2))
    torch.testing.assert_close(y_r[:, :4], y_l[:, :4])  # same until the first episode start
    assert (y_r[:, 4:] - y_l[:, 4:]).abs().max() > 1e-3


def test_s5_matches_its_equations_for_one_layer():
    """x_k = Λ̄ x_{k-1} + B̄ u_k, y_k = 2 Re(C̃ x_k) + D u_k with ZOH (S5 §3), written out."""
    core = make_core("s5", layers=1)
    ssm = core.blocks[0].ssm
    torch.manual_seed(5)
    u = torch.randn(1, 6, WIDTH, dtype=torch.float64)
    y, _ = ssm(u, torch.zeros(1, 6, dtype=torch.bool), ssm.initial_state(1))
    lam = torch.complex(ssm.lambda_re, ssm.lambda_im)
    step = torch.exp(ssm.log_step)
    lam_bar = torch.exp(lam * step)
    b_bar = ((lam_bar - 1) / lam)[:, None] * torch.complex(ssm.b_re, ssm.b_im)
    c = torch.complex(ssm.c_re, ssm.c_im)
    x = torch.zeros(ssm.state_size, dtype=lam.dtype)
    for k in range(6):
        x = lam_bar * x + b_bar @ u[0, k].to(lam.dtype)
        expected = 2 * (c @ x).real + ssm.d * u[0, k]
        torch.testing.assert_close(y[0, k], expected, rtol=1e-10, atol=1e-12)


def test_hippo_n_eigendecomposition():
    size = 8
    lam, v = hippo_n(size)
    n = torch.arange(size, dtype=torch.float64)
    legs = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for k in range(size):
            if i > k:
                legs[i, k] = -((2 * i + 1) ** 0.5) * ((2 * k + 1) ** 0.5)
            elif i == k:
                legs[i, k] = -(i + 1)
    normal = legs + torch.outer(torch.sqrt(n + 0.5), torch.sqrt(n + 0.5))
    torch.testing.assert_close(lam.real, torch.full((size,), -0.5, dtype=torch.float64))
    torch.testing.assert_close(v.conj().T @ v, torch.eye(size, dtype=torch.complex128))
    rebuilt = v @ torch.diag(lam) @ v.conj().T
    torch.testing.assert_close(rebuilt, normal.to(torch.complex128), atol=1e-10, rtol=1e-10)


def test_s5_initial_step_sizes_and_stability():
    core = make_core("s5")
    for block in core.blocks:
        lam_bar, _, _ = block.ssm.discretize()
        assert (lam_bar.abs() < 1).all()
        step = block.ssm.log_step.exp()
        assert step.min() >= 1e-3 - 1e-9 and step.max() <= 1e-1 + 1e-9


@pytest.mark.parametrize("discrete", [True, False])
def test_actor_critic_shapes_and_modes_agree(discrete):
    torch.manual_seed(6)
    cfg = OmegaConf.create({"width": WIDTH, "layers": 1, **CORES["s5"]})
    agent = ActorCritic(5, 3 if discrete else 2, discrete, build_core(cfg), WIDTH).double()
    obs = torch.randn(4, 7, 5, dtype=torch.float64)
    reset = torch.zeros(4, 7, dtype=torch.bool)
    reset[:, 0] = True
    dist, value, _ = agent(obs, reset, agent.initial_state(4))
    action = dist.sample()
    assert value.shape == (4, 7) and agent.log_prob(dist, action).shape == (4, 7)
    assert action.shape == ((4, 7) if discrete else (4, 7, 2))
    state = agent.initial_state(4)
    for t in range(7):
        step_dist, step_value, state = agent.step(obs[:, t], reset[:, t], state)
        torch.testing.assert_close(step_value, value[:, t])
        torch.testing.assert_close(
            agent.log_prob(step_dist, action[:, t]), agent.log_prob(dist, action)[:, t]
        )


def test_bad_core_config_is_rejected():
    with pytest.raises(ValueError, match="model.name"):
        build_core(OmegaConf.create({"name": "mamba", "width": 8, "layers": 1}))
    with pytest.raises(ValueError, match="state_size"):
        make_core("s5", state_size=10, blocks=2)


def test_s5_discretisation_cache_follows_parameter_updates():
    """Acting reuses Λ̄, B̄ under no_grad; an optimiser step must invalidate them."""
    core = make_core("s5", layers=1)
    x = torch.randn(2, WIDTH, dtype=torch.float64)
    reset = torch.zeros(2, dtype=torch.bool)
    state = core.initial_state(2)
    with torch.no_grad():
        before, _ = core.step(x, reset, state)
    optimizer = torch.optim.SGD(core.parameters(), lr=0.1)
    y, _ = core(x[:, None], reset[:, None], state)
    y.sum().backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = core.step(x, reset, state)
    expected, _ = core(x[:, None], reset[:, None], state)  # grad enabled: recomputed
    torch.testing.assert_close(after, expected[:, 0].detach())
    assert (after - before).abs().max() > 1e-6


def test_transformer_block_full_context_path_is_causal_attention():
    """mask=None (common attention, causal) = an explicit lower-triangular SDPA mask."""
    from s4rl.model import TransformerBlock

    torch.manual_seed(7)
    block = TransformerBlock(64, 2).double()
    x = torch.randn(3, 9, 64, dtype=torch.float64)
    causal = torch.tril(torch.ones(9, 9, dtype=torch.bool))
    torch.testing.assert_close(block(x), block(x, causal.expand(3, 1, 9, 9)))
    changed = x.clone()
    changed[:, -1] += 1.0
    torch.testing.assert_close(block(changed)[:, :-1], block(x)[:, :-1])  # no peeking ahead
