"""Learning tests (minutes on a CPU): PPO learns Hopper; GMOM learns without clipping."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from gmom_ppo.train import run

CONF = str(Path(__file__).parents[2] / "gmom_ppo" / "conf")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "gmom"])
def test_hopper_return_rises(tmp_path, algo):
    """50k steps: a random Hopper policy scores ≈ 20; both update rules pass 200."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"algo={algo}", "total_steps=51200", "logging.progress=false"],
        )
    assert run(cfg, tmp_path)["episodic_return"] > 200
