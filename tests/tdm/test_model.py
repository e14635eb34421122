import math

import pytest
import torch

from tdm.model import History, MLPDynamics, TrajectoryTransformer, TransformerConfig
from tdm.planners import Planner
from tdm.tokenizer import Tokenizer, inverse_mu_law, mu_law

D, A = 3, 2


def tokenizer(bins=64):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(4, 21, D, generator=g) * torch.tensor([1.0, 5.0, 0.1])
    acts = torch.rand(4, 20, A, generator=g) * 2 - 1
    return Tokenizer.fit(bins, obs[:, :-1], acts, torch.rand(4, 20, generator=g)), obs, acts


def test_mu_law_is_gato_eq1_and_inverts():
    x = torch.tensor([-300.0, -1.0, 0.0, 0.5, 256.0], dtype=torch.float64)
    expected = [math.copysign(math.log(abs(v) * 100 + 1) / math.log(256 * 100 + 1), v) for v in x]
    assert torch.allclose(mu_law(x), torch.tensor(expected, dtype=torch.float64))
    assert torch.allclose(inverse_mu_law(mu_law(x)), x)


def test_round_trip_within_half_a_bin_and_bin_edges():
    tok, obs, _ = tokenizer(bins=64)
    x = obs.flatten(0, 1)
    tokens = tok.encode(x, "obs")
    assert tokens.dtype == torch.int64 and tokens.min() >= 0 and tokens.max() < 64
    z = lambda v: mu_law((v.double() - tok.mean[:D]) / tok.std[:D])  # noqa: E731
    inside = z(x).abs() <= 1  # values beyond the clip decode to the last bin
    err = (z(tok.decode(tokens, "obs")) - z(x)).abs()[inside]
    assert err.max() <= 1 / 64 + 1e-9  # half of the bin width 2 / bins
    # the companded range [-1, 1] is cut into equal bins: the edges map to the first / last
    edges = inverse_mu_law(torch.tensor([-1.0, -1 + 2 / 64 - 1e-9, 1.0], dtype=torch.float64))
    raw = edges[:, None] * tok.std[:D] + tok.mean[:D]
    assert tok.encode(raw, "obs").tolist() == [[0] * D, [0] * D, [63] * D]
    assert tok.encode(raw[:1] - 1e6, "obs").tolist() == [[0] * D]  # clipped


def test_rows_are_obs_action_reward():
    tok, obs, acts = tokenizer()
    rewards = torch.rand(4, 20)
    tokens = tok.encode_steps(obs[:, :-1], acts, rewards).view(4, 20, tok.slots)
    assert torch.equal(tokens[..., :D], tok.encode(obs[:, :-1], "obs"))
    assert torch.equal(tokens[..., D : D + A], tok.encode(acts, "action"))
    assert torch.equal(tokens[..., -1], tok.encode(rewards[..., None], "reward")[..., 0])


def tdm(role="dynamics"):
    torch.manual_seed(0)
    tok, obs, acts = tokenizer()
    cfg = TransformerConfig(dim=64, layers=2, heads=2, max_timesteps=12)
    return TrajectoryTransformer(cfg, tok, role).eval(), obs, acts


def test_tdm_rollout_with_kv_cache_equals_without():
    model, obs, acts = tdm()
    history = History(obs[0, :6], acts[0, :5], torch.rand(5))
    candidates = torch.rand(8, 6, A) * 2 - 1
    r1, s1 = model.imagine(history, candidates, context=4)
    r2, s2 = model.imagine(history, candidates, context=4, use_cache=False)
    assert r1.shape == (8, 6) and s1.shape == (8, 6, D)
    assert torch.allclose(r1, r2, atol=1e-5) and torch.equal(s1, s2)


def test_loss_targets_follow_the_role():
    model, _, _ = tdm()
    mask = model.target_mask(2 * model.slots)
    row = [True] * D + [False] * A + [True]
    assert mask.tolist() == [False] + row[1:] + row
    policy, _, _ = tdm("policy")
    assert policy.target_mask(model.slots).tolist() == [False] * D + [True] * A + [False]
    with pytest.raises(ValueError, match="model.window"):
        model(torch.zeros(1, 13 * model.slots, dtype=torch.long))


def test_policy_acts_in_bounds():
    policy, obs, acts = tdm("policy")
    a = policy.act(History(obs[0, :3], acts[0, :2], torch.rand(2)), context=4)
    assert a.shape == (A,) and a.abs().max() <= 1


@pytest.mark.parametrize("members, probabilistic", [(1, False), (5, True)])
def test_mlp_and_ensemble_shapes(members, probabilistic):
    _, obs, acts = tokenizer()
    rewards = torch.rand(4, 20)
    stats = MLPDynamics.fit_stats(obs, acts, rewards)
    model = MLPDynamics(D, A, 32, 2, members, probabilistic, stats)
    batch = (members, 7)
    loss = model.loss(
        torch.randn(*batch, D), torch.randn(*batch, A), torch.randn(*batch, D), torch.randn(batch)
    )
    assert loss.ndim == 0 and torch.isfinite(loss)
    r, s = model.imagine(
        History(obs[0, :1], acts[0, :0], rewards[0, :0]),
        torch.zeros(11, 4, A),
        torch.Generator().manual_seed(0),
    )
    assert r.shape == (11, 4) and s.shape == (11, 4, D)
    if members > 1:  # TS-∞: candidates on different members (and noise) disagree
        assert not torch.allclose(s[0], s[1])
    else:
        assert torch.allclose(s[0], s[1])


@pytest.mark.parametrize("kind", ["random", "proposal", "cem"])
def test_planner_finds_a_known_optimum(kind):
    """Score = −‖a − a*‖² over the sequence: the best first action is near a*[0]."""
    target = torch.tensor([[0.5, -0.5]] * 5)

    def score(actions):
        return -((actions - target) ** 2).sum((1, 2))

    planner = Planner(
        kind, A, horizon=5, candidates=512, noise_std=0.3, iterations=4, elites=32, seed=0
    )
    for _ in range(10):  # warm starts improve the proposal / CEM mean
        action = planner.act(score)
    assert action.shape == (A,)
    assert abs(action - target[0].numpy()).max() < (0.35 if kind == "random" else 0.15)


def test_planner_rejects_bad_settings():
    with pytest.raises(ValueError, match="planner.horizon=0"):
        Planner("random", 1, horizon=0, candidates=4)
    with pytest.raises(ValueError, match="planner.kind='mppi'"):
        Planner("mppi", 1, horizon=3, candidates=4)


def test_planner_breaks_ties_at_random():
    """All candidates score 0 (a sparse reward nobody reaches): the plan must not stay put."""
    planner = Planner("proposal", A, horizon=3, candidates=16, seed=0)
    actions = {tuple(planner.act(lambda a: torch.zeros(a.shape[0]))) for _ in range(5)}
    assert len(actions) > 1 and (0.0, 0.0) not in actions
