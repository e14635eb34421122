"""The real entry points (collect → train → eval) as a user runs them, resume, bad configs."""

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

import algo_distill.train
from algo_distill.collect import validate as validate_collect
from algo_distill.train import run, validate
from tests.algo_distill.conftest import compose_config
from tests.entry_points import run_module


def test_smoke_collect_train_eval(tmp_path):
    data, sweep = tmp_path / "data", tmp_path / "sweep"
    out = run_module("algo_distill.collect", "experiment=smoke", f"hydra.run.dir={data}").stdout
    assert "8 learning histories" in out
    assert sorted(p.name for p in data.glob("*.npz")) == [
        "expert_00000.npz",
        "expert_00001.npz",
        "learning_00000.npz",
        "learning_00001.npz",
    ]
    for method in ("algorithm_distillation", "expert_distillation"):
        run_dir = sweep / method
        run_module(
            "algo_distill.train",
            "experiment=smoke",
            f"dataset={data}",
            f"method={method}",
            f"hydra.run.dir={run_dir}",
        )
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert records[0]["type"] == "config"
        assert records[-1]["step"] == 6 and records[-1]["tokens_per_s"] > 0
        assert "val/return_last" in records[-1]
        assert (run_dir / "checkpoints" / "step_00000006.pt").exists()

    figures = tmp_path / "figures"
    out = run_module(
        "algo_distill.eval",
        f"runs={sweep}",
        "episodes=3",
        "copies=2",
        "source_episodes=4",
        "speed_episodes=2",
        f"figures={figures}",
    ).stdout
    assert "| AD |" in out and "| ED |" in out and "| source Q-learning |" in out
    assert "test tasks" in out and "same returns: True" in out
    for name in ("results.md", "results.json", "return_vs_episode.png", "return_vs_steps.png"):
        assert (sweep / "eval" / name).exists()
    # the README figures are written by the eval command itself
    for name in ("return_vs_episode.png", "return_vs_steps.png"):
        assert (figures / name).stat().st_size > 10_000
    assert json.loads((sweep / "eval" / "results.json").read_text())["split"] == "test"


def test_quick_evaluation_never_sees_the_test_tasks(smoke_dataset, tmp_path, monkeypatch):
    seen = []

    def recording_rollout(model, env, episodes, seed):
        seen.append(env.tasks)
        return np.zeros((env.num_envs, episodes), dtype=np.float32)

    monkeypatch.setattr(algo_distill.train, "in_context_rollout", recording_rollout)
    run(compose_config("train", ["experiment=smoke", f"dataset={smoke_dataset}"]), tmp_path)
    manifest = json.loads((smoke_dataset / "manifest.json").read_text())
    assert len(seen) == 2  # eval_every=3 of 6 steps
    for tasks in seen:
        assert {tuple(t) for t in tasks.tolist()} == {tuple(t) for t in manifest["val_tasks"]}


def test_bad_config_fails_before_any_work(tmp_path):
    result = run_module(
        "algo_distill.collect", "env.size=4", f"hydra.run.dir={tmp_path / 'c'}", check=False
    )
    assert result.returncode != 0
    assert "env.size=4 is not valid: an odd integer" in result.stderr
    assert not (tmp_path / "c" / "manifest.json").exists()
    result = run_module(
        "algo_distill.train", f"dataset={tmp_path}", f"hydra.run.dir={tmp_path / 't'}", check=False
    )
    assert "dataset=" in result.stderr and "a directory written by algo_distill.collect" in (
        result.stderr
    )
    assert not (tmp_path / "t" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "method",
            "behaviour_cloning",
            "one of ('algorithm_distillation', 'expert_distillation')",
        ),
        ("context_episodes", 0, "context_episodes=0 is not valid: an integer with 0.0 < x"),
        ("model.heads", 4, "model.heads=4 is not valid: a divisor of model.hidden=64"),
        ("trainer.batch_size", 0, "trainer.batch_size=0 is not valid"),
        ("logging.wandb_mode", "always", "one of ('disabled', 'offline', 'online')"),
    ],
)
def test_bad_train_values_name_the_field(smoke_dataset, key, value, message):
    cfg = compose_config("train", ["experiment=smoke", f"dataset={smoke_dataset}"])
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value)
    with pytest.raises(ValueError) as info:
        validate(cfg)
    assert message in str(info.value)


def test_a_bad_type_names_the_field(smoke_dataset):
    cfg = compose_config(
        "train", ["experiment=smoke", f"dataset={smoke_dataset}", "trainer.lr=abc"]
    )
    with pytest.raises(ValueError, match=r"^trainer\.lr='abc' is not valid: a number"):
        validate(cfg)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("env.name", "watermaze", "env.name='watermaze' is not valid: one of"),
        (
            "env.num_test_tasks",
            49,
            "env.num_test_tasks=49 is not valid: an integer with 1 <= x <= 48",
        ),
        (
            "env.num_val_tasks",
            40,
            "env.num_val_tasks=40 is not valid: an integer with 1 <= x <= 39",
        ),
        ("source.gamma", 1.0, "source.gamma=1.0 is not valid: a discount in [0, 1)"),
        ("num_histories", 0, "num_histories=0 is not valid"),
        ("source.alpha", "abc", "source.alpha='abc' is not valid: a number"),
    ],
)
def test_bad_collect_values_name_the_field(key, value, message):
    cfg = compose_config("collect", [])
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value)
    with pytest.raises(ValueError) as info:
        validate_collect(cfg)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "experiment", ["smoke", "small", "small_dark_room_hard", "small_key_to_door", "paper"]
)
@pytest.mark.parametrize(
    "env",
    [
        "dark_room_small",
        "dark_room",
        "dark_room_hard_small",
        "dark_room_hard",
        "key_to_door_small",
        "key_to_door",
    ],
)
def test_every_tier_composes_and_validates(smoke_dataset, experiment, env):
    validate_collect(compose_config("collect", [f"experiment={experiment}", f"env={env}"]))
    validate(compose_config("train", [f"experiment={experiment}", f"dataset={smoke_dataset}"]))


def test_resume_reaches_the_same_weights(smoke_dataset, tmp_path):
    overrides = ["experiment=smoke", f"dataset={smoke_dataset}", "trainer.keep_last=5"]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = run(compose_config("train", overrides), full_dir)
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "step_00000003.pt", resumed_dir / "checkpoints")
    resumed = run(compose_config("train", overrides), resumed_dir)
    assert resumed == full
    weights = [
        torch.load(d / "checkpoints" / "step_00000006.pt", weights_only=True)["models"]["model"]
        for d in (full_dir, resumed_dir)
    ]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
