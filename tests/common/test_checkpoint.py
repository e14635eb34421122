import random

import numpy as np
import pytest
import torch

import common.checkpoint as ckpt
from common.seeding import seed_everything


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    return model, opt, sched


def _train(model, opt, sched, steps: range, run_dir=None, every: int = 0):
    """Noisy regression: every step draws fresh data from the global RNGs, so an exact resume
    needs the model, optimiser, scheduler and RNG states all restored."""
    for step in steps:
        x = torch.randn(16, 4) + float(np.random.rand()) + random.random()
        loss = (model(x).squeeze(-1) - x.sum(-1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if every and (step + 1) % every == 0:
            ckpt.save_checkpoint(
                run_dir,
                step + 1,
                models={"m": model},
                optimizers={"o": opt},
                schedulers={"s": sched},
                keep_last=10,
            )
    return loss.item()


def test_resume_matches_uninterrupted_run(tmp_path):
    seed_everything(3)
    model, opt, sched = _toy()
    uninterrupted = _train(model, opt, sched, range(20), tmp_path / "a", every=10)

    # A second process would start from scratch and find the step-10 checkpoint.
    resumed_model, resumed_opt, resumed_sched = _toy(seed=99)
    seed_everything(12345)  # any RNG state: the checkpoint's must replace it
    step, _ = ckpt.load_checkpoint(
        tmp_path / "a" / "checkpoints" / "step_00000010.pt",
        models={"m": resumed_model},
        optimizers={"o": resumed_opt},
        schedulers={"s": resumed_sched},
    )
    assert step == 10
    resumed = _train(resumed_model, resumed_opt, resumed_sched, range(step, 20))
    assert resumed == uninterrupted
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_state_round_trip():
    seed_everything(0)
    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(1)
    ckpt.restore_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, _ = _toy()
    ckpt.save_checkpoint(tmp_path, 1, models={"m": model}, optimizers={"o": opt})
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def crashing_save(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, models={"m": model}, optimizers={"o": opt})
    monkeypatch.undo()

    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["step_00000001.pt"]  # no step-2 file, no temporary left behind
    latest = ckpt.latest_checkpoint(tmp_path)
    fresh, _, _ = _toy(seed=5)
    step, _ = ckpt.load_checkpoint(latest, models={"m": fresh})
    assert step == 1
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, before[key])


def test_keep_last_prunes_oldest(tmp_path):
    model, _, _ = _toy()
    for step in (5, 10, 15, 20):
        ckpt.save_checkpoint(tmp_path, step, models={"m": model}, keep_last=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_00000015.pt", "step_00000020.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000020.pt"
    assert ckpt.latest_checkpoint(tmp_path / "nothing_here") is None


def test_load_is_weights_only_and_names_missing_entries(tmp_path):
    model, _, _ = _toy()
    path = ckpt.save_checkpoint(tmp_path, 1, models={"m": model})
    torch.load(path, weights_only=True)  # only safe types were stored
    with pytest.raises(KeyError, match="no model named 'other'"):
        ckpt.load_checkpoint(path, models={"other": model})
