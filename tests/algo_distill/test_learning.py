"""The paper's effect at the small tier (slow: ~50 min on a 2-core CPU, one thread)."""

from pathlib import Path

import pytest

from algo_distill.collect import run as collect
from algo_distill.eval import SOURCE, evaluate
from algo_distill.train import run as train
from tests.algo_distill.conftest import compose_config


@pytest.mark.slow
def test_algorithm_distillation_improves_in_context_and_expert_distillation_does_not(
    tmp_path: Path,
):
    data = tmp_path / "data"
    collect(compose_config("collect", ["experiment=small"]), data)
    for method, steps in (("algorithm_distillation", 4000), ("expert_distillation", 1000)):
        for seed in (1, 2, 3):
            overrides = [
                "experiment=small",
                f"dataset={data}",
                f"method={method}",
                f"seed={seed}",
                f"trainer.steps={steps}",
            ]
            train(compose_config("train", overrides), tmp_path / "runs" / f"{method}-{seed}")
    eval_cfg = compose_config("eval", [f"runs={tmp_path / 'runs'}"])
    report = evaluate(tmp_path / "runs", tmp_path / "eval", eval_cfg)
    table, curves = report["table"], report["curves"]
    ad, ed, source = table["AD"], table["ED"], table[SOURCE]
    optimal = ad["last5"].mean / ad["fraction_of_optimal"].mean
    assert ad["first"].n == ed["first"].n == 3

    def gain_after_episode_10(name):  # mean return of episodes 36-40 minus that of 6-10
        mean = curves[name].mean(0)
        return mean[35:40].mean() - mean[5:10].mean()

    # AD: frozen weights, test goals, the return rises across episodes to >= 70% of optimal.
    # The 80% is not a robust outcome of this tier (2026-12-03, 35 training goals:
    # seeds 1-5 at 89%, 84%, 67%, 82%, 72% of optimal; README), so the test guards 70%.
    assert ad["fraction_of_optimal"].mean >= 0.7
    assert ad["last5"].mean - ad["first"].mean > 0.5 * optimal
    assert gain_after_episode_10("AD") > 0.2 * optimal
    # ED: no learning in its data; it may return to a goal it stumbles on in its first episodes
    # (measured: 0.46 -> 1.3 by episode 10) but then stays flat and far below AD
    assert gain_after_episode_10("ED") < 0.1 * optimal
    assert ed["fraction_of_optimal"].mean < 0.3
    assert ad["last5"].mean > ed["last5"].mean + 0.4 * optimal
    # the source learner, from scratch on the same goals, improves too (the reference curve)
    assert source["last5"].mean > source["first"].mean + 0.5 * optimal
