"""Learning test (slow): behaviour cloning through Gato's tokens works end to end — a small
model trained on Reacher-v5 expert episodes alone (collect → train → eval, the real entry
points' `run`s) reaches well above the random policy, as % of expert (the README: 85–87% of
expert on this task; this test measured 84% with n = 6, 19 min beside a `make test`)."""

import numpy as np
import pytest

from gato.collect import run as collect
from gato.eval import run as evaluate
from gato.train import run as train
from tests.gato.conftest import compose_config


@pytest.mark.slow
def test_gato_clones_the_reacher_expert(tmp_path):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    collect(
        compose_config(
            "collect", ["experiment=small", "tasks=[control/Reacher-v5]", "progress=false"]
        ),
        data,
    )
    overrides = [
        "experiment=small",
        f"dataset={data}",
        "mixture.text=0",
        "mixture.captions=0",
        "trainer.steps=600",
        "trainer.eval_every=300",
        "logging.progress=false",
    ]
    train(compose_config("train", overrides), run_dir)
    results = evaluate(
        compose_config(
            "eval",
            [
                "experiment=small",
                f"run={run_dir}",
                "eval_episodes.control=6",
                "text_windows=1",
                "caption_images=0",
                "speed_steps=0",
                "progress=false",
            ],
        )
    )
    score = float(np.mean(results["prompt"]["control/Reacher-v5"]["normalized"]))
    assert score > 0.5, score
