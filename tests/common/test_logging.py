import json

import pytest

from common.logging import RunLogger, read_metrics


def test_jsonl_records_step_wall_time_and_config_once(tmp_path):
    with RunLogger(tmp_path, config={"lr": 0.1, "task": {"name": "bandit"}}) as logger:
        logger.log(1, {"loss": 2.5})
        logger.log(2, {"loss": 1.5, "acc": 0.5})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"type": "config", "config": {"lr": 0.1, "task": {"name": "bandit"}}}
    assert [r["type"] for r in lines].count("config") == 1
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["loss"] == 1.5 and records[1]["acc"] == 0.5
    assert all(r["wall_time"] >= 0 for r in records)


def test_disabled_logger_writes_nothing(tmp_path):
    logger = RunLogger(tmp_path / "run", enabled=False, config={"a": 1})
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_tensor_metrics_become_numbers(tmp_path):
    import torch

    with RunLogger(tmp_path) as logger:
        logger.log(3, {"loss": torch.tensor(0.25)})
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss"] == 0.25


def test_bad_wandb_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="wandb_mode='sometimes'"):
        RunLogger(tmp_path, wandb_mode="sometimes")


def test_open_run_writes_config_and_marks_a_resume(tmp_path):
    from omegaconf import OmegaConf

    from common.logging import open_run

    cfg = OmegaConf.create(
        {"lr": 0.1, "logging": {"console_every": 1, "tensorboard": False, "wandb_mode": "disabled"}}
    )
    with open_run(tmp_path, cfg, project="p", step=0) as logger:
        logger.log(1, {"loss": 1.0})
    assert OmegaConf.load(tmp_path / "config.yaml").lr == 0.1
    with open_run(tmp_path, cfg, project="p", step=5, resumed_from="ckpt.pt") as logger:
        logger.log(6, {"loss": 0.5})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines] == ["config", "metrics", "metrics", "metrics"]
    assert lines[2]["step"] == 5 and lines[2]["resumed_from"] == "ckpt.pt"
    open_run(tmp_path / "other", cfg, project="p", step=0, enabled=False).close()
    assert not (tmp_path / "other").exists()


def test_find_runs_lists_directories_started_by_open_run(tmp_path):
    from common.logging import find_runs

    for name in ("sweep/a", "sweep/b/nested", "sweep/no_metrics"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.yaml").write_text("seed: 1\n")
    for name in ("sweep/a", "sweep/b/nested"):
        (tmp_path / name / "metrics.jsonl").write_text("")
    (tmp_path / "sweep" / "eval").mkdir()
    (tmp_path / "sweep" / "eval" / "metrics.jsonl").write_text("")  # no config: not a run
    assert find_runs(tmp_path / "sweep") == [tmp_path / "sweep/a", tmp_path / "sweep/b/nested"]
    assert find_runs(tmp_path / "sweep" / "a") == [tmp_path / "sweep/a"]
