from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from causal_seq.train import validate

CONF = str(Path(__file__).parents[2] / "causal_seq" / "conf")


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("experiment", ["smoke", "small", "paper"])
@pytest.mark.parametrize("task", ["bandit", "grid"])
@pytest.mark.parametrize("model", ["gru", "transformer"])
def test_every_tier_composes_and_validates(experiment, task, model):
    cfg = _compose([f"experiment={experiment}", f"task={task}", f"model={model}"])
    validate(cfg)
    assert cfg.task.name == task and cfg.model.name == model


def test_experiment_overrides_defaults():
    base, smoke = _compose([]), _compose(["experiment=smoke"])
    assert smoke.trainer.steps < base.trainer.steps
    assert _compose(["experiment=paper"]).model.hidden == 128


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task.horizon", -3, "task.horizon=-3 is not valid: an integer with 0.0 < x"),
        ("task.p_best", 1.5, "task.p_best=1.5 is not valid: a number with 0.0 < x < 1.0"),
        ("task.p_best", 0.1, "greater than task.p_other"),
        ("teaching", ["factual", "imitation"], "drawn from ('factual', 'counterfactual')"),
        ("trainer.batch_size", 0, "trainer.batch_size=0"),
        ("logging.wandb_mode", "always", "one of ('disabled', 'offline', 'online')"),
    ],
)
def test_bad_values_name_the_field(key, value, message):
    cfg = _compose([])
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value)
    with pytest.raises(ValueError) as info:
        validate(cfg)
    assert message in str(info.value)


def test_a_bad_type_names_the_field():
    with pytest.raises(ValueError, match=r"^trainer\.lr='abc' is not valid: a number"):
        validate(_compose(["trainer.lr=abc"]))


def test_unknown_task_and_short_transformer_context():
    cfg = _compose(["model=transformer", "model.max_len=10"])
    with pytest.raises(ValueError, match=r"model.max_len=10 .*>= task.horizon=30"):
        validate(cfg)
    cfg = _compose(["task=grid", "task.size=4"])
    with pytest.raises(ValueError, match="task.size=4 is not valid: an odd integer"):
        validate(cfg)
    cfg = _compose([])
    with open_dict(cfg):
        cfg.task.name = "maze"
    with pytest.raises(ValueError, match=r"task.name='maze' is not valid: one of \('bandit'"):
        validate(cfg)
