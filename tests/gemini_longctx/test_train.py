"""gemini_longctx.train: the real entry point (smoke), resume = uninterrupted, config errors
before any work, and a context-parallel (ring attention) step on 2 gloo processes = 1 process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from common.distributed import spawn_local
from gemini_longctx.model import LongContextLM
from gemini_longctx.train import (
    MIXTURE_KEYS,
    average_gradients,
    lm_loss,
    softmax_vocab,
    stage_at,
    stage_mixture,
    validate,
)
from tests.entry_points import run_module, train_one_process_and_fsdp
from tests.gemini_longctx.tiny import tiny_config

CONF = str(Path(__file__).parents[2] / "gemini_longctx" / "conf")


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "metrics"]


def test_smoke_train_stages_and_resume_equals_uninterrupted(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_module("gemini_longctx.train", "experiment=smoke", f"hydra.run.dir={full}")
    records = _records(full)
    assert [r["seq_len"] for r in records if "loss" in r] == [256, 256, 512]
    last = records[-1]
    for key in ("val_loss_prose", "val_loss_code", "val_retrieval_acc", "expert_load_max"):
        assert key in last
    assert 0 <= last["val_copy_acc"] <= 1  # stage 2 trains copy samples
    assert len(last["expert_share"]) == 4 and abs(sum(last["expert_share"]) - 1) < 1e-3
    assert (full / "tokenizer.json").exists()

    run_module("gemini_longctx.train", "experiment=smoke", f"hydra.run.dir={resumed}")
    (resumed / "checkpoints" / "step_00000006.pt").unlink()  # as if killed after step 4
    run_module("gemini_longctx.train", "experiment=smoke", f"hydra.run.dir={resumed}")
    a = torch.load(full / "checkpoints" / "step_00000006.pt", weights_only=True)["models"]["model"]
    b = torch.load(resumed / "checkpoints" / "step_00000006.pt", weights_only=True)
    for name, tensor in a.items():
        torch.testing.assert_close(b["models"]["model"][name], tensor, rtol=0, atol=0)
    assert any("resumed_from" in r for r in _records(resumed))


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.ffn=sparse", "model.ffn"),
        ("model.heads=3", "model.heads"),
        ("model.kv_heads=3", "model.kv_heads"),
        ("model.top_k=9", "model.top_k"),
        ("trainer.lr=abc", "trainer.lr"),
        ("trainer.tokens_per_step=1000", "stages[0].seq_len"),
        ("model.max_context=1024", "model.max_context"),
        ("model.max_context=abc", "model.max_context"),
        ("trainer.tokens_per_step=abc", "trainer.tokens_per_step"),
        ("data.retrieval_fraction=1.5", "data.retrieval_fraction"),
        ("data.prose=[]", "data.prose"),
        ("data.vocab_size=100", "data.vocab_size"),
        ("stages=[{seq_len:256,steps:5,max_fact:1}]", r"stages[0]"),
        ("stages=[{seq_len:256,steps:5,retrieval_fraction:2.0}]", "stages[0].retrieval_fraction"),
        ("stages=[{seq_len:256,steps:5,max_facts:0}]", "stages[0].max_facts"),
        ("stages=[{seq_len:256,steps:5,copy_fraction:0.5,retrieval_fraction:0.6}]", "stages[0]"),
        ("data.copy_vocab=0", "data.copy_vocab"),
        ("data.copy_vocab=5000", "data.copy_vocab"),
        ("stages=[{seq_len:256,steps:5,copy_vocab:9999}]", "stages[0].copy_vocab"),
        ("stages=[{seq_len:256,steps:5,copy_softmax:partial}]", "stages[0].copy_softmax"),
        ("stages=[{seq_len:256,steps:5,copy_softmax:copy_ids}]", "stages[0].copy_softmax"),
        (
            "stages=[{seq_len:256,steps:5,copy_fraction:1.0,retrieval_fraction:0.0,"
            "copy_softmax:copy_ids}]",  # data.copy_vocab is null: no copy ids to restrict to
            "stages[0].copy_softmax",
        ),
    ],
)
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate(_compose([override]))


def test_stage_mixture_overrides_the_data_defaults():
    """A retrieval curriculum: a stage's own retrieval_fraction / max_facts win over data.*;
    stages without them use data.*."""
    cfg = _compose(
        ["stages=[{seq_len:256,steps:5,retrieval_fraction:1.0,max_facts:1},{seq_len:256,steps:5}]"]
    )
    validate(cfg)
    assert stage_mixture(cfg, cfg.stages[0]) == {
        "copy_fraction": cfg.data.copy_fraction,
        "copy_vocab": cfg.data.copy_vocab,
        "retrieval_fraction": 1.0,
        "max_facts": 1,
    }
    assert stage_mixture(cfg, cfg.stages[1]) == {k: cfg.data[k] for k in MIXTURE_KEYS}


def test_copy_ids_softmax_normalises_over_the_copy_ids_only():
    """A copy_softmax=copy_ids stage's loss is the cross-entropy of the logits of ids
    [0, copy_vocab) alone; a full stage's spans the whole vocabulary."""
    cfg = _compose(
        [
            "data.copy_vocab=8",
            "stages=[{seq_len:256,steps:5,copy_fraction:1.0,retrieval_fraction:0.0,"
            "copy_softmax:copy_ids},{seq_len:256,steps:5}]",
        ]
    )
    validate(cfg)
    assert [softmax_vocab(cfg, s) for s in cfg.stages] == [8, None]
    torch.manual_seed(0)
    model = LongContextLM(tiny_config(vocab_size=61, aux_loss_coef=0.0, z_loss_coef=0.0))
    tokens = torch.randint(0, 8, (2, 17))
    logits = model(tokens[:, :-1]).logits
    restricted, _, _ = lm_loss(model, tokens, vocab=8)
    full, _, _ = lm_loss(model, tokens)
    expected = torch.nn.functional.cross_entropy(
        logits[..., :8].flatten(0, 1), tokens[:, 1:].flatten()
    )
    torch.testing.assert_close(restricted, expected)
    assert restricted < full  # fewer ids share the probability


def test_unknown_prose_source_fails_before_work(tmp_path):
    result = run_module(
        "gemini_longctx.train",
        "experiment=smoke",
        "data.prose=[bible]",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert result.returncode != 0 and "data.prose" in result.stderr


def test_stage_at():
    stages = [{"seq_len": 256, "steps": 3}, {"seq_len": 1024, "steps": 2}]
    assert [stage_at(stages, s) for s in range(6)] == [0, 0, 0, 1, 1, 1]


def _cp_step(rank: int, world: int) -> dict[str, torch.Tensor]:
    """One context-parallel forward/backward: this rank holds its chunk of every sequence."""
    torch.manual_seed(0)
    model = LongContextLM(tiny_config(vocab_size=61, aux_loss_coef=0.0, z_loss_coef=0.0)).double()
    tokens = torch.randint(0, 61, (2, 33))
    loss, _, _ = lm_loss(model, tokens, dist.group.WORLD)
    loss.backward()
    average_gradients(model, dist.group.WORLD)
    dist.all_reduce(loss)
    return {"loss": loss.detach() / world} | {n: p.grad for n, p in model.named_parameters()}


def test_context_parallel_step_on_two_processes_equals_one():
    """Ring attention across 2 gloo ranks (float64) gives the single-process loss and gradients
    (the MoE auxiliary losses are off: they are per-rank batch statistics)."""
    torch.manual_seed(0)
    model = LongContextLM(tiny_config(vocab_size=61, aux_loss_coef=0.0, z_loss_coef=0.0)).double()
    tokens = torch.randint(0, 61, (2, 33))
    loss, _, _ = lm_loss(model, tokens)
    loss.backward()
    for rank_result in spawn_local(_cp_step, 2):
        torch.testing.assert_close(rank_result["loss"], loss.detach(), atol=1e-12, rtol=1e-10)
        for name, p in model.named_parameters():
            torch.testing.assert_close(rank_result[name], p.grad, atol=1e-10, rtol=1e-8)


def test_fsdp_on_two_ranks_equals_one_process_and_converts_for_eval(tmp_path):
    """torchrun with trainer.parallel=fsdp (each rank half of every batch, sharded checkpoints)
    ends with the one-process weights; the converted checkpoint is what eval loads."""
    no_aux = ["model.aux_loss_coef=0", "model.z_loss_coef=0"]  # per-rank batch statistics
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    a, b = train_one_process_and_fsdp(
        "gemini_longctx.train", ["experiment=smoke", *no_aux], single, sharded, step=6
    )
    for name, tensor in a["models"]["model"].items():
        torch.testing.assert_close(b["models"]["model"][name], tensor, atol=1e-5, rtol=1e-4)
    losses = [[r["loss"] for r in _records(d) if "loss" in r] for d in (single, sharded)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
