"""The real entry points, as a user runs them: smoke training, evaluation, errors, determinism."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from gmom_ppo.train import run
from tests.entry_points import run_module

ROOT = Path(__file__).parents[2]
CONF = str(ROOT / "gmom_ppo" / "conf")


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=smoke", *overrides])


def test_smoke_train_then_eval(tmp_path):
    sweep = tmp_path / "sweep"
    for algo in ("ppo", "gmom"):
        run_module(
            "gmom_ppo.train", "experiment=smoke", f"algo={algo}", f"hydra.run.dir={sweep / algo}"
        )
    records = _records(sweep / "gmom")
    assert records[0]["type"] == "config"
    iterations = [r for r in records if "iteration" in r]
    assert [r["step"] for r in iterations] == [128, 256]
    assert "gmom/actor_iterations" in iterations[0] and "steps_per_s" in iterations[0]
    probes = [r for r in records if "diag_epoch" in r]
    assert sorted({r["diag_epoch"] for r in probes}) == [0, 1, 2]
    assert all(r["kurtosis/actor_grad_norm"] == r["kurtosis/actor_grad_norm"] for r in probes)
    assert (sweep / "gmom" / "checkpoints" / "step_00000002.pt").exists()

    figures = sweep.parent / "figures"
    out = run_module("gmom_ppo.eval", f"runs={sweep}", f"figures={figures}").stdout
    assert "| Hopper-v5 | ppo | 1 | 256 |" in out and "| Hopper-v5 | gmom | 1 | 256 |" in out
    for name in ("returns", "kurtosis_vs_step", "kurtosis_vs_epoch"):
        assert (sweep / "eval" / f"Hopper-v5_{name}.png").exists()
        # the README figures come from the eval command (figures=<dir>)
        assert (figures / f"Hopper-v5_{name}.png").exists()


def test_bad_env_id_fails_before_training(tmp_path):
    result = run_module(
        "gmom_ppo.train", "env.id=Hoper-v5", f"hydra.run.dir={tmp_path}", check=False
    )
    assert result.returncode != 0
    assert "env.id='Hoper-v5' is not valid: a registered gymnasium id" in result.stderr
    assert "Hopper-v5" in result.stderr  # suggested as a close match
    assert not (tmp_path / "metrics.jsonl").exists()


def test_discrete_action_env_is_refused(tmp_path):
    with pytest.raises(ValueError, match="continuous \\(Box\\) action space"):
        run(_cfg(["env.id=CartPole-v1"]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def _learning_records(run_dir):
    drop = {"wall_time", "steps_per_s", "rollout_s", "update_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in _records(run_dir)[1:]]


@pytest.mark.parametrize("algo", ["ppo", "gmom"])
def test_seeded_runs_are_identical(tmp_path, algo):
    first = run(_cfg([f"algo={algo}"]), tmp_path / "a")
    second = run(_cfg([f"algo={algo}"]), tmp_path / "b")
    assert first["episodic_return"] == second["episodic_return"]
    assert _learning_records(tmp_path / "a") == _learning_records(tmp_path / "b")
    run(_cfg([f"algo={algo}", "seed=2"]), tmp_path / "c")
    assert _learning_records(tmp_path / "c") != _learning_records(tmp_path / "a")


def test_resume_continues_from_the_checkpoint(tmp_path):
    run(_cfg(["trainer.keep_last=5"]), tmp_path / "full")
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "step_00000001.pt", resumed / "checkpoints")
    run(_cfg([]), resumed)
    records = _records(resumed)
    assert records[0]["resumed_from"].endswith("step_00000001.pt")
    assert [r["iteration"] for r in records if "iteration" in r] == [2]
    assert [r["step"] for r in records if "iteration" in r] == [256]
    with pytest.raises(ValueError, match="was written by a run with"):
        run(_cfg(["seed=7"]), resumed)


def test_device_defaults_to_auto_and_cuda_without_cuda_fails_before_any_output(tmp_path):
    assert _cfg([]).device == "auto"
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(ValueError, match="device='cuda' was asked for but CUDA is not available"):
        run(_cfg(["device=cuda"]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
