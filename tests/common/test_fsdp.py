"""FSDP2 and sharded checkpoints through common/: two gloo processes against one plain process.

One two-rank run (a module fixture, since every spawn pays two torch imports) trains the tiny
decoder of `fsdp_toy` with FSDP2 + activation checkpointing, saves a sharded checkpoint, loads it
into a freshly built FSDP model and takes one more step with both; the tests check its results.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import common.sharded_checkpoint as sharded
from common.checkpoint import load_checkpoint
from common.convert_checkpoint import main as convert_main
from common.distributed import DistInfo, all_reduce_mean, init_distributed, spawn_local
from common.fsdp import mixed_precision_policy, parallelize
from common.seeding import seed_everything
from common.sharded_checkpoint import (
    MARKER,
    latest_sharded_checkpoint,
    list_sharded_checkpoints,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from tests.common.fsdp_toy import CONTEXT, VOCAB, build, make_optimizer, train_step
from tests.entry_points import ENV, ROOT, run_module

STEPS, ROWS = 5, 4  # AdamW steps; sequences per rank (the global batch is ROWS * world)
CPU = torch.device("cpu")


def _rows(step: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of the global batch of `step` (the same global batch at any world)."""
    tokens = torch.randint(
        VOCAB, (2 * ROWS, CONTEXT + 1), generator=torch.Generator().manual_seed(step)
    )
    share = len(tokens) // world
    return tokens[rank * share : (rank + 1) * share]


PROBE = torch.randint(VOCAB, (3, CONTEXT), generator=torch.Generator().manual_seed(1234))


def _objects(model, optimizer, scheduler) -> dict:
    return {
        "models": {"lm": model},
        "optimizers": {"lm": optimizer},
        "schedulers": {"lm": scheduler},
    }


def _fsdp(seed: int, info: DistInfo):
    model = build(seed)
    parallelize(model, model.blocks, "fsdp", info, device=CPU, activation_checkpointing=True)
    return (model, *make_optimizer(model))


def _local(value):
    return value.to_local() if hasattr(value, "to_local") else value


def _mismatches(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Names of the entries of two (nested) state dicts that are not exactly equal."""
    bad = []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            bad += _mismatches(x, y, f"{prefix}{key}.")
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            bad += [] if torch.equal(_local(x), _local(y)) else [f"{prefix}{key}"]
        elif x != y:
            bad.append(f"{prefix}{key}")
    return bad


def _full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded parameters under their plain names (a collective under FSDP)."""
    options = StateDictOptions(full_state_dict=True)
    return {k: v.detach() for k, v in get_model_state_dict(model, options=options).items()}


def _two_rank_run(rank: int, world: int, run_dir: str) -> dict:
    info = init_distributed(CPU)
    model, optimizer, scheduler = _fsdp(0, info)
    losses = [
        all_reduce_mean(train_step(model, optimizer, scheduler, _rows(step, rank, world)))
        for step in range(STEPS)
    ]
    params = _full_params(model)
    with torch.no_grad():
        logits = model(PROBE)
    seed_everything(100 + rank)  # a different RNG stream on each rank
    objects = _objects(model, optimizer, scheduler)
    save_sharded_checkpoint(run_dir, STEPS, **objects, extra={"saved_by": rank})
    draw_after_save = torch.rand(3)

    fresh = _fsdp(1, info)
    seed_everything(7)  # any RNG state: the checkpoint's must replace it
    step, extra = load_sharded_checkpoint(latest_sharded_checkpoint(run_dir), **_objects(*fresh))
    draw_after_load = torch.rand(3)
    mismatches = [
        *_mismatches(model.state_dict(), fresh[0].state_dict()),
        *_mismatches(optimizer.state_dict(), fresh[1].state_dict(), "optimizer."),
        *_mismatches(scheduler.state_dict(), fresh[2].state_dict(), "scheduler."),
    ]
    batch = _rows(STEPS, rank, world)
    next_losses = [train_step(*objs, batch) for objs in ((model, optimizer, scheduler), fresh)]
    return {
        "losses": torch.stack(losses),
        "params": params,
        "logits": logits,
        "step": step,
        "extra": extra,
        "draws": (draw_after_save, draw_after_load),
        "mismatches": mismatches,
        "next_losses": next_losses,
        "next_mismatches": _mismatches(model.state_dict(), fresh[0].state_dict()),
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], object]:
    run_dir = tmp_path_factory.mktemp("fsdp_run")
    return spawn_local(_two_rank_run, 2, str(run_dir)), run_dir


@pytest.fixture(scope="module")
def one_process():
    """The same training in one process, without FSDP, on the whole global batch."""
    model = build(0)
    optimizer, scheduler = make_optimizer(model)
    losses = torch.stack(
        [train_step(model, optimizer, scheduler, _rows(step, 0, 1)) for step in range(STEPS)]
    )
    return losses, model, optimizer


def test_two_fsdp_ranks_match_one_plain_process(two_ranks, one_process):
    results, _ = two_ranks
    losses, model, _ = one_process
    for result in results:
        torch.testing.assert_close(result["losses"], losses, atol=1e-6, rtol=1e-6)
        assert result["params"].keys() == dict(model.named_parameters()).keys()
        for name, param in model.named_parameters():
            torch.testing.assert_close(result["params"][name], param.detach(), atol=1e-6, rtol=0)


def test_dcp_round_trip_restores_every_state_and_the_next_step(two_ranks):
    results, run_dir = two_ranks
    assert [p.name for p in list_sharded_checkpoints(run_dir)] == [f"step_{STEPS:08d}"]
    shards = sorted(p.name for p in latest_sharded_checkpoint(run_dir).glob("*.distcp"))
    assert len(shards) == 2  # each rank wrote its own shards
    for result in results:
        assert result["step"] == STEPS
        assert result["extra"] == {"saved_by": 0}  # rank 0's extra
        assert result["mismatches"] == []  # model, AdamW and scheduler, shard by shard
        assert torch.equal(*result["draws"])  # this rank's RNG stream continues
        assert torch.equal(*result["next_losses"])
        assert result["next_mismatches"] == []
    assert not torch.equal(results[0]["draws"][0], results[1]["draws"][0])  # per-rank RNG


def test_converted_checkpoint_loads_into_an_unsharded_model(two_ranks, one_process, tmp_path):
    results, run_dir = two_ranks
    _, reference_model, reference_optimizer = one_process
    out = tmp_path / "eval" / "lm.pt"
    run_module("common.convert_checkpoint", str(latest_sharded_checkpoint(run_dir)), str(out))

    model = build(seed=3)
    optimizer, scheduler = make_optimizer(model)
    step, extra = load_checkpoint(out, **_objects(model, optimizer, scheduler))
    assert (step, extra) == (STEPS, {"saved_by": 0})
    with torch.no_grad():
        torch.testing.assert_close(model(PROBE), results[0]["logits"], atol=1e-6, rtol=0)
    # The optimiser state converted from the shards is the one-process run's AdamW state.
    params = dict(reference_model.named_parameters())
    names = dict(model.named_parameters())
    for name, param in names.items():
        got = optimizer.state[param]
        want = reference_optimizer.state[params[name]]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(got[key], want[key], atol=1e-9, rtol=1e-4)
    assert scheduler.last_epoch == STEPS

    small = tmp_path / "models_only.pt"
    convert_main([str(latest_sharded_checkpoint(run_dir)), str(small), "--models-only"])
    assert torch.load(small, weights_only=True)["optimizers"] == {}


def test_sharded_checkpoint_loads_at_another_world_size(two_ranks):
    results, run_dir = two_ranks
    latest = latest_sharded_checkpoint(run_dir)
    model = build(seed=3)
    with pytest.raises(ValueError, match="RNG states of 2 ranks"):
        load_sharded_checkpoint(latest, models={"lm": model})
    step, _ = load_sharded_checkpoint(latest, models={"lm": model}, restore_rng=False)
    assert step == STEPS
    with torch.no_grad():
        torch.testing.assert_close(model(PROBE), results[0]["logits"], atol=1e-6, rtol=0)


def _plain(seed: int = 0):
    model = build(seed)
    return (model, *make_optimizer(model))


def _train(objects, steps: range, run_dir=None, every: int = 0) -> None:
    """Batches from the global RNG, so that an exact resume needs the RNG state too."""
    for step in steps:
        train_step(*objects, torch.randint(VOCAB, (2, CONTEXT + 1)))
        if every and (step + 1) % every == 0:
            save_sharded_checkpoint(run_dir, step + 1, **_objects(*objects), keep_last=2)


def test_one_process_without_a_process_group_resumes_exactly(tmp_path):
    seed_everything(3)
    uninterrupted = _plain()
    _train(uninterrupted, range(6), tmp_path, every=2)
    names = [p.name for p in list_sharded_checkpoints(tmp_path)]
    assert names == ["step_00000004", "step_00000006"]  # keep_last=2 pruned step 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == names

    resumed = _plain(seed=9)
    seed_everything(12345)
    step, extra = load_sharded_checkpoint(
        tmp_path / "checkpoints" / "step_00000004", **_objects(*resumed)
    )
    assert (step, extra) == (4, {})
    _train(resumed, range(step, 6))
    assert _mismatches(uninterrupted[0].state_dict(), resumed[0].state_dict()) == []
    assert _mismatches(uninterrupted[1].state_dict(), resumed[1].state_dict()) == []


def test_half_written_checkpoints_are_ignored(tmp_path, monkeypatch):
    objects = _plain()
    save_sharded_checkpoint(tmp_path, 2, **_objects(*objects))
    before = {k: v.clone() for k, v in objects[0].state_dict().items()}
    directory = tmp_path / "checkpoints"
    (directory / "step_00000008").mkdir()  # a directory with no marker
    (directory / "step_00000008" / ".metadata").write_bytes(b"truncated")

    real_save = sharded.dcp.save

    def killed_mid_save(state, **kwargs):
        real_save(state, **kwargs)  # every shard written, no marker yet
        raise KeyboardInterrupt("killed before the marker")

    monkeypatch.setattr(sharded.dcp, "save", killed_mid_save)
    with torch.no_grad():
        objects[0].head.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_sharded_checkpoint(tmp_path, 4, **_objects(*objects))
    monkeypatch.undo()

    assert (directory / "step_00000004.tmp" / ".metadata").is_file()
    assert not (directory / "step_00000004").exists()
    latest = latest_sharded_checkpoint(tmp_path)
    assert latest.name == "step_00000002"
    fresh = _plain(seed=5)
    step, _ = load_sharded_checkpoint(latest, **_objects(*fresh))
    assert step == 2 and _mismatches(fresh[0].state_dict(), before) == []
    with pytest.raises(ValueError, match=f"no {MARKER} marker"):
        load_sharded_checkpoint(directory / "step_00000004.tmp", models={"lm": fresh[0]})

    save_sharded_checkpoint(tmp_path, 4, **_objects(*objects))  # the retried save completes
    assert latest_sharded_checkpoint(tmp_path).name == "step_00000004"
    assert not (directory / "step_00000004.tmp").exists()


def test_bad_parallel_value_names_the_field():
    model = build()
    with pytest.raises(ValueError, match=r"trainer.parallel='zero3'.*\('ddp', 'fsdp'\)"):
        parallelize(model, model.blocks, "zero3", DistInfo(), device=CPU)


def test_one_process_without_a_group_is_left_unsharded(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed(CPU)
    for parallel in ("ddp", "fsdp"):
        model = build()
        assert parallelize(model, model.blocks, parallel, info, device=CPU) is model
        assert type(model) is type(build())


def test_optimizers_must_name_their_model():
    model = build()
    with pytest.raises(ValueError, match="optimizers \\['other'\\] name no model"):
        save_sharded_checkpoint("unused", 1, models={"lm": model}, optimizers={"other": None})


def test_mixed_precision_policy_is_bf16_on_cuda_only():
    cuda = mixed_precision_policy(torch.device("cuda"), enabled=True)
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    for policy in (
        mixed_precision_policy(CPU, enabled=True),
        mixed_precision_policy(torch.device("cuda"), enabled=False),
    ):
        assert (policy.param_dtype, policy.reduce_dtype) == (None, None)  # fp32 as stored


def _toy_command(run_dir) -> list[str]:
    """Two FSDP ranks under torchrun, 8 steps, a sharded checkpoint every 2 (half a second of
    sleep after each step leaves time to kill the run between checkpoints)."""
    return [
        *("torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "tests.common.fsdp_toy", str(run_dir)),
        *("--steps", "8", "--checkpoint-every", "2", "--sleep", "0.5"),
    ]


def _final_state(run_dir) -> tuple[dict, dict]:
    model = build(seed=3)
    optimizer, scheduler = make_optimizer(model)
    latest = latest_sharded_checkpoint(run_dir)
    assert latest.name == "step_00000008"
    load_sharded_checkpoint(latest, **_objects(model, optimizer, scheduler), restore_rng=False)
    return model.state_dict(), optimizer.state_dict()


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", *_toy_command(killed)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while "step_00000004" not in [p.name for p in list_sharded_checkpoints(killed)]:
            assert process.poll() is None and time.monotonic() < deadline, "no step-4 checkpoint"
            time.sleep(0.05)
        os.kill(int((killed / "pids" / "rank_1").read_text()), signal.SIGKILL)
        assert process.wait(timeout=60) != 0  # torchrun stops the other rank and fails
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of that run is still alive
        except ProcessLookupError:
            pass
    assert latest_sharded_checkpoint(killed).name < "step_00000008"

    resumed = run_module(*_toy_command(killed))  # the same command again
    assert "resumed from" in resumed.stdout
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "step_00000006",
        "step_00000008",
    ]
    uninterrupted = tmp_path / "uninterrupted"
    run_module(*_toy_command(uninterrupted))
    (model_a, optim_a), (model_b, optim_b) = _final_state(killed), _final_state(uninterrupted)
    assert _mismatches(model_a, model_b) == []
    assert _mismatches(optim_a, optim_b) == []


def _compiled_run(rank: int, world: int) -> tuple[torch.Tensor, int]:
    info = init_distributed(CPU)
    model = build(0)
    parallelize(
        model,
        model.blocks,
        "fsdp",
        info,
        device=CPU,
        activation_checkpointing=True,
        compile_blocks=True,
    )
    optimizer, scheduler = make_optimizer(model)
    losses = [
        all_reduce_mean(train_step(model, optimizer, scheduler, _rows(step, rank, world)))
        for step in range(3)
    ]
    return torch.stack(losses), torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_checkpointed_blocks_under_fsdp_match_eager(one_process):
    results = spawn_local(_compiled_run, 2)
    for losses, graphs in results:
        assert graphs > 0  # inductor compiled the blocks
        torch.testing.assert_close(losses, one_process[0][:3], atol=1e-5, rtol=1e-5)
