"""The real entry points as a user runs them (smoke tier), config composition, validation,
resume, and GAE against a hand computation."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch._subclasses.fake_tensor import FakeTensorMode

from s4rl.model import build_core
from s4rl.train import compute_gae, run, validate
from tests.entry_points import run_module

CONF = str(Path(__file__).parents[2] / "s4rl" / "conf")
MODELS = ("s5", "s5_noreset", "lstm", "gru", "transformer")


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _iterations(run_dir: Path) -> list[dict]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "iteration" in r]


def test_smoke_train_every_model_then_eval(tmp_path):
    sweep = tmp_path / "sweep"
    run_module(
        "s4rl.train",
        "-m",
        "experiment=smoke",
        f"model={','.join(MODELS)}",
        f"hydra.sweep.dir={sweep}",
    )
    for model in MODELS:
        run_dir = sweep / f"memory10-{model}-seed1"
        iterations = _iterations(run_dir)
        assert [r["step"] for r in iterations] == [256 * (i + 1) for i in range(8)]
        assert all(r["success"] == r["success"] for r in iterations if "success" in r)
        assert (run_dir / "checkpoints" / "step_00000008.pt").exists()
    out = run_module("s4rl.eval", f"runs={sweep}", "episodes=16").stdout
    for model in MODELS:
        assert f"| memory10 | {model} | 1 | 2,048 |" in out
    assert (sweep / "eval" / "success_vs_memory_length.png").exists()
    assert (sweep / "eval" / "memory10_returns.png").exists()


def test_smoke_popgym_and_meta_tasks(tmp_path):
    sweep = tmp_path / "sweep"
    run_module(
        "s4rl.train",
        "-m",
        "experiment=smoke",
        "task=repeat_previous,meta_cartpole",
        "model=s5",
        f"hydra.sweep.dir={sweep}",
    )
    run_module(
        "s4rl.train",
        "experiment=smoke",
        "task=meta_dmc",
        "task.episode_steps=16",
        "num_envs=2",
        "ppo.num_minibatches=1",
        "total_steps=128",
        f"hydra.run.dir={sweep / 'dmc'}",
    )
    assert len(_iterations(sweep / "RepeatPreviousEasy-s5-seed1")) == 8
    assert len(_iterations(sweep / "meta_cartpole-s5-seed1")) == 8
    assert _iterations(sweep / "dmc")[-1]["step"] == 128
    figures = tmp_path / "figures"
    out = run_module(
        "s4rl.eval", f"runs={sweep}", "episodes=4", "trials=3", f"figures={figures}"
    ).stdout
    assert "| meta_cartpole | s5 | 1 |" in out and "| RepeatPreviousEasy | s5 | 1 |" in out
    # the floor of the meta tasks: a random policy under the same evaluation
    assert "random policy, meta_cartpole (eval on new projections): eval return" in out
    assert "random policy, meta_dmc_train (eval on the test tasks): eval return" in out
    assert (sweep / "eval" / "meta_cartpole_trials.png").exists()
    # the README figures come from the eval command (figures=<dir>), the same files
    assert (figures / "meta_cartpole_trials.png").read_bytes() == (
        sweep / "eval" / "meta_cartpole_trials.png"
    ).read_bytes()


def test_rerun_resumes_and_a_different_config_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    args = ["s4rl.train", "experiment=smoke", "model=gru", f"hydra.run.dir={run_dir}"]
    run_module(*args, "total_steps=1024")
    assert len(_iterations(run_dir)) == 4
    run_module(*args, "total_steps=1024")  # finished: resumes at the end, trains nothing
    assert len(_iterations(run_dir)) == 4
    bad = run_module(*args, "total_steps=1024", "ppo.lr=0.1", check=False)
    assert bad.returncode != 0 and "was written by a run with" in bad.stderr


def test_resume_from_a_mid_training_checkpoint_continues_at_the_next_iteration(tmp_path):
    """What the README promises: agent, Adam and step come back and training goes on from there
    (not bit-identical to an uninterrupted run: the environments restart)."""
    overrides = ["experiment=smoke", "model=gru", "trainer.keep_last=5"]
    run(_compose(overrides), tmp_path / "full")
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "step_00000004.pt", resumed / "checkpoints")
    run(_compose(overrides), resumed)
    records = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["resumed_from"].endswith("step_00000004.pt")
    assert [r["iteration"] for r in _iterations(resumed)] == [5, 6, 7, 8]
    assert [r["step"] for r in _iterations(resumed)] == [256 * i for i in range(5, 9)]


def test_device_cuda_without_cuda_fails_before_any_output(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(ValueError, match="device='cuda' was asked for but CUDA is not available"):
        run(_compose(["experiment=smoke", "device=cuda"]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


TIERS = ("smoke", "small", "small_popgym", "small_meta", "small_meta_dmc", "paper", "paper_meta")


@pytest.mark.parametrize("experiment", TIERS)
@pytest.mark.parametrize("model", MODELS)
def test_every_tier_composes_and_validates(experiment, model):
    validate(_compose([f"experiment={experiment}", f"model={model}"]))


@pytest.mark.parametrize("experiment", TIERS)
@pytest.mark.parametrize("model", ["s5", "s5_noreset"])
def test_s5_config_scans_with_triton_on_cuda_and_chunked_on_cpu(experiment, model):
    """The composed config's S5 runs the Triton scan on CUDA tensors (fake ones: no GPU needed)
    and the chunked scan on CPU tensors, bit for bit what `model.scan=chunked` computes."""
    overrides = [f"experiment={experiment}", f"model={model}"]
    cfg = _compose(overrides).model
    ssm = build_core(cfg).blocks[0].ssm
    shape = (2, 5, ssm.state_size)
    with FakeTensorMode():
        cuda = torch.zeros(shape, dtype=torch.complex64, device="cuda")
        assert ssm.scan_path(cuda, cuda) == "triton"
    cpu = torch.zeros(shape, dtype=torch.complex64)
    assert ssm.scan_path(cpu, cpu) == "chunked"

    torch.manual_seed(1)
    x, reset = torch.randn(3, 7, cfg.width), torch.rand(3, 7) < 0.3
    outputs = []
    for extra in ([], ["model.scan=chunked"]):
        torch.manual_seed(0)
        core = build_core(_compose(overrides + extra).model)
        outputs.append(core(x, reset, core.initial_state(3)))
    for got, chunked in zip(*outputs, strict=True):
        assert torch.equal(got, chunked)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.state_size=10", "model.state_size=10 is not valid: a multiple of 2·model.blocks"),
        ("ppo.num_minibatches=3", "ppo.num_minibatches=3 is not valid: a divisor of num_envs"),
        ("model.scan=fast", "model.scan='fast' is not valid"),
        ("ppo.gamma=1.5", "ppo.gamma=1.5 is not valid"),
        ("ppo.lr=abc", "ppo.lr='abc' is not valid: a number"),
        ("total_steps=10", "total_steps=10 is not valid: >= one rollout"),
        ("logging.wandb_mode=cloud", "logging.wandb_mode='cloud' is not valid"),
    ],
)
def test_bad_config_names_the_field(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(_compose([override]))


def test_bad_task_fails_before_training(tmp_path):
    result = run_module(
        "s4rl.train",
        "task=repeat_previous",
        "task.env_id=popgym-Nope-v0",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert result.returncode != 0 and "popgym-Nope-v0" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_gae_against_a_hand_computation():
    """Two envs, three steps; env 0's episode ends at t=1 (no bootstrap through it)."""
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    values = torch.tensor([[0.5, 0.1], [0.2, 0.2], [0.3, 0.3]])
    dones = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    next_value = torch.tensor([0.4, 0.5])
    adv, ret = compute_gae(rewards, values, dones, next_value, gamma, lam)
    # env 0: δ2 = 0 + .9·.4 − .3 = .06; δ1 = 2 − .2 = 1.8 (done); δ0 = 1 + .9·.2 − .5 = .68
    a2 = 0.06
    a1 = 1.8
    a0 = 0.68 + gamma * lam * a1
    torch.testing.assert_close(adv[:, 0], torch.tensor([a0, a1, a2]))
    # env 1: δ2 = 1 + .9·.5 − .3; δ1 = 0 + .9·.3 − .2; δ0 = 0 + .9·.2 − .1
    d2, d1, d0 = 1 + 0.45 - 0.3, 0.27 - 0.2, 0.18 - 0.1
    b2 = d2
    b1 = d1 + gamma * lam * b2
    b0 = d0 + gamma * lam * b1
    torch.testing.assert_close(adv[:, 1], torch.tensor([b0, b1, b2]))
    torch.testing.assert_close(ret, adv + values)
