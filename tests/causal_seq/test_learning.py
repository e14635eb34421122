"""The paper's effect at the small tier (slow: `make test-slow`)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from causal_seq.eval import POSTERIOR, evaluate
from causal_seq.train import run

CONF = str(Path(__file__).parents[2] / "causal_seq" / "conf")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["bandit", "grid"])
def test_counterfactual_matches_thompson_and_factual_is_deluded(tmp_path, task):
    for seed in (1, 2, 3):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            overrides = ["experiment=small", f"task={task}", "model=gru", f"seed={seed}"]
            cfg = compose(config_name="train", overrides=[*overrides, "logging.progress=false"])
        run(cfg, tmp_path / f"seed{seed}")
    table = evaluate(tmp_path, tmp_path / "eval", episodes=1000, seed=0, late_fraction=1 / 3)
    rows = table["table"][task]
    thompson = rows[POSTERIOR]["late_optimal"][0]
    counterfactual = rows["gru counterfactual"]["late_optimal"]
    factual = rows["gru factual"]["late_optimal"]
    assert rows["gru counterfactual"]["seeds"] == 3
    assert counterfactual[0] > factual[0] + 0.5  # counterfactual >> factual
    assert abs(counterfactual[0] - thompson) < 0.05  # close to Thompson sampling
    assert factual[0] < 0.4  # the factual model stays with its first (random) choice
    # the factual model follows the conditioning posterior, the counterfactual the do-posterior
    assert rows["gru factual"]["tv_cond"][0] < 0.1 < rows["gru factual"]["tv_do"][0]
    assert rows["gru counterfactual"]["tv_do"][0] < 0.1 < rows["gru counterfactual"]["tv_cond"][0]
