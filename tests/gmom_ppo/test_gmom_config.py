"""Config composition and validation: every tier composes; bad values name the field."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from gmom_ppo.train import validate

CONF = str(Path(__file__).parents[2] / "gmom_ppo" / "conf")


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("experiment", ["smoke", "small", "paper"])
@pytest.mark.parametrize("algo", ["ppo", "ppo_noclip", "gmom"])
def test_every_tier_composes_and_validates(experiment, algo):
    cfg = _compose([f"experiment={experiment}", f"algo={algo}"])
    validate(cfg)
    clipped = algo == "ppo"
    assert (cfg.ppo.clip_ratio is not None) == clipped
    assert cfg.ppo.clip_value == clipped and (cfg.ppo.max_grad_norm is not None) == clipped


def test_heuristics_switch_off_from_the_command_line():
    cfg = _compose(["ppo.clip_ratio=null", "ppo.clip_value=false", "ppo.max_grad_norm=null"])
    validate(cfg)
    assert cfg.algo.name == "ppo" and cfg.ppo.clip_ratio is None and cfg.ppo.max_grad_norm is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("env.id", "Nope-v0", "env.id='Nope-v0' is not valid: a registered gymnasium id"),
        ("algo.name", "trpo", "algo.name='trpo' is not valid: one of ('ppo', 'gmom')"),
        ("ppo.num_minibatches", 3, "ppo.num_minibatches=3 is not valid: a divisor of"),
        ("ppo.clip_ratio", -0.2, "ppo.clip_ratio=-0.2 is not valid: null (off)"),
        ("ppo.gamma", 1.5, "ppo.gamma=1.5 is not valid: a float in (0, 1]"),
        ("gmom.num_blocks", 100, "gmom.num_blocks=100 is not valid: an integer with 1 <= x <= 64"),
        ("diagnostics.samples", 2, "diagnostics.samples=2"),
        ("total_steps", 0, "total_steps=0 is not valid: an integer with 0.0 < x"),
        ("logging.wandb_mode", "always", "one of ('disabled', 'offline', 'online')"),
    ],
)
def test_bad_values_name_the_field(key, value, message):
    cfg = _compose([])
    with open_dict(cfg):
        section, _, leaf = key.rpartition(".")
        (cfg[section] if section else cfg)[leaf] = value
    with pytest.raises(ValueError) as error:
        validate(cfg)
    assert message in str(error.value)


def test_a_bad_type_names_the_field():
    with pytest.raises(ValueError, match=r"^ppo\.lr='abc' is not valid: a number"):
        validate(_compose(["ppo.lr=abc"]))
