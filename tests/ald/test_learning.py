"""Slow learning test (make test-slow): the small tier's robust effect. The threshold was set
after the README's runs (ALD's GTrXL learner, trained only on LSTM-actor data, ended at
0.95–1.00 frozen success in 3/3 seeds), leaving room for the asynchronous loop's noise. The
LSTM alone is not asserted to fail: a rerun of its seed 1 solved the task (runs are not
deterministic), so its 0/3 in the README is a sample."""

import pytest

from ald.eval import frozen_success, load_nets
from tests.entry_points import run_module


@pytest.mark.slow
def test_ald_learner_learns_imaze_from_lstm_actor_data(tmp_path):
    run_module("ald.train", "experiment=small", "algo=ald", f"hydra.run.dir={tmp_path}")
    nets, cfg = load_nets(tmp_path)
    learner = frozen_success(nets["learner"], cfg.task, 256, 64, 100_001, False)[0]
    assert learner >= 0.9, learner
