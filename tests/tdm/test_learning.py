"""Learning test (slow, ~20 min on 2 cores): the single-environment TDM planner beats a random
policy by a clear margin — the README's cartpole-160 setting, seed 1 (measured there: 252 vs
the random policy's 111)."""

import numpy as np
import pytest

from tdm.collect import run as collect
from tdm.eval import run as evaluate
from tdm.train import run as train
from tests.tdm.conftest import compose_config


@pytest.mark.slow
def test_tdm_planner_beats_random_on_cartpole_swingup(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    collect(
        compose_config(
            "collect",
            ["experiment=small", "episodes.random=40", "episodes.expert=120", "progress=false"],
        ),
        data,
    )
    train(
        compose_config("train", ["experiment=small", f"dataset={data}", "logging.progress=false"]),
        runs / "tdm",
    )
    results = evaluate(
        compose_config(
            "eval",
            [
                "experiment=small",
                f"runs={runs}",
                f"dataset={data}",
                "plan_episodes=2",
                "progress=false",
            ],
        ),
        tmp_path,
    )
    r = results["tasks"]["cartpole-swingup"]
    tdm, random = np.mean(r["models"]["tdm"]["returns"]), r["scores"]["random"]
    assert tdm > 1.5 * random, (tdm, random)
