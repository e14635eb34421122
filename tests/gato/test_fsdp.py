"""gato.train under torchrun with FSDP2 on two gloo ranks = one process (issue 17): every rank
draws the same global batch and trains on its half, so the losses and the final weights match.
Sequences with images are left out of the training mixture: the randomised patch position
intervals (App. C.3) are drawn per rank, so their values depend on how the batch is split."""

import json

import numpy as np
import torch

from tests.entry_points import train_one_process_and_fsdp


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_fsdp_on_two_ranks_equals_one_process(smoke_dataset, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    common = [
        "experiment=smoke",
        f"dataset={smoke_dataset}",
        "trainer.steps=3",
        "trainer.eval_every=3",
        "trainer.checkpoint_every=3",
        # no training images: their patch positions are drawn at random per rank (App. C.3)
        "mixture.atari=0",
        "mixture.captions=0",
    ]
    a, b = train_one_process_and_fsdp("gato.train", common, single, sharded, step=3)
    assert a["models"]["model"].keys() == b["models"]["model"].keys()
    for name, tensor in a["models"]["model"].items():
        torch.testing.assert_close(b["models"]["model"][name], tensor, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(_losses(single), _losses(sharded), rtol=1e-5)
    # best.pt is gathered from the shards: the same weights as the single process's
    best = [torch.load(d / "best.pt", weights_only=True)["model"] for d in (single, sharded)]
    for name, tensor in best[0].items():
        torch.testing.assert_close(best[1][name], tensor, atol=1e-5, rtol=1e-4)
