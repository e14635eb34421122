"""The real entry points, as a user runs them, and exact resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from causal_seq.train import run
from tests.entry_points import run_module

ROOT = Path(__file__).parents[2]


def test_smoke_train_then_eval(tmp_path):
    run_dir = tmp_path / "run"
    run_module("causal_seq.train", "experiment=smoke", "task=grid", f"hydra.run.dir={run_dir}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "config"
    last = records[-1]
    assert last["step"] == 6 and 0.0 <= last["late_optimal/counterfactual"] <= 1.0
    assert (run_dir / "checkpoints" / "step_00000006.pt").exists()

    figures = tmp_path / "figures"
    out = run_module(
        "causal_seq.eval", f"runs={run_dir}", "episodes=32", f"figures={figures}"
    ).stdout
    assert "| grid | gru counterfactual |" in out and "| grid | gru factual |" in out
    for name in ("results.md", "grid_optimal.png", "grid_regret.png", "grid_belief.png"):
        assert (run_dir / "eval" / name).exists()
    # the README figures come from the eval command (figures=<dir>), the same files
    for name in ("grid_optimal.png", "grid_regret.png", "grid_belief.png"):
        assert (figures / name).read_bytes() == (run_dir / "eval" / name).read_bytes()


def test_bad_config_fails_before_training(tmp_path):
    result = run_module(
        "causal_seq.train",
        "task=bandit",
        "task.horizon=0",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert result.returncode != 0
    assert "task.horizon=0 is not valid: an integer with 0.0 < x" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def _cfg(overrides):
    conf = str(ROOT / "causal_seq" / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=smoke", *overrides])


def _weights(run_dir, step):
    path = run_dir / "checkpoints" / f"step_{step:08d}.pt"
    return torch.load(path, weights_only=True)["models"]


@pytest.mark.parametrize("model", ["gru", "transformer"])
def test_resume_reaches_the_same_weights_and_metrics(tmp_path, model):
    overrides = [f"model={model}", "trainer.keep_last=5", "logging.console_every=100"]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = run(_cfg(overrides), full_dir)

    # a run killed after step 3: only its step-3 checkpoint survives
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "step_00000003.pt", resumed_dir / "checkpoints")
    resumed = run(_cfg(overrides), resumed_dir)

    assert resumed == full
    for mode, state in _weights(full_dir, 6).items():
        for key, value in state.items():
            assert torch.equal(value, _weights(resumed_dir, 6)[mode][key]), (mode, key)


def test_resume_refuses_a_different_run(tmp_path):
    run(_cfg([]), tmp_path)
    with pytest.raises(ValueError, match="was written by a run with"):
        run(_cfg(["trainer.steps=9", "seed=2"]), tmp_path)


def test_torchrun_two_processes(tmp_path):
    """Data-parallel training with two gloo processes (what torchrun does on several GPUs)."""
    run_dir = tmp_path / "ddp"
    run_module(
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "causal_seq.train",
        "experiment=smoke",
        f"hydra.run.dir={run_dir}",
    )
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6
    checkpoint = torch.load(run_dir / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert len(checkpoint["extra"]["generator"]) == 2  # both ranks' data streams saved
