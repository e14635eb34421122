"""Learning test (slow, minutes): the single-environment TDM planner beats a random policy."""

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
            [
                "episodes.random=8",
                "episodes.expert=16",
                "progress=false",
                "expert.kind=proposal",
                "expert.iterations=1",
                "expert.candidates=128",
            ],
        ),
        data,
    )
    train(
        compose_config(
            "train", [f"dataset={data}", "trainer.steps=1500", "logging.progress=false"]
        ),
        runs / "tdm",
    )
    results = evaluate(
        compose_config(
            "eval", [f"runs={runs}", f"dataset={data}", "plan_episodes=2", "progress=false"]
        ),
        tmp_path,
    )
    r = results["tasks"]["cartpole-swingup"]
    tdm, random = np.mean(r["models"]["tdm"]["returns"]), r["scores"]["random"]
    assert tdm > 2 * random, (tdm, random)
