"""The real entry points (smoke tier), config validation, resume, and the asynchronous loop's
shutdown on Ctrl-C and on an actor crash."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ald.train import validate
from tests.entry_points import ENV, ROOT, run_module

CONF = str(Path(__file__).parents[2] / "ald" / "conf")
ALGOS = ("ald", "lstm", "transformer")


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "metrics" and "update" in r]


def test_smoke_train_every_algo_then_eval(tmp_path):
    sweep = tmp_path / "sweep"
    run_module(
        "ald.train", "-m", "experiment=smoke", f"algo={','.join(ALGOS)}", f"hydra.sweep.dir={sweep}"
    )
    for algo in ALGOS:
        run_dir = sweep / f"imaze4-{algo}-seed1"
        records = _records(run_dir)
        assert records[-1]["step"] == 1024 and records[-1]["update"] == 32
        assert (run_dir / "checkpoints" / "step_00000032.pt").exists()
        assert ("distill/kl" in records[-1]) == (algo == "ald")
    out = run_module(
        "ald.eval",
        f"runs={sweep}",
        "episodes=16",
        "num_envs=8",
        "latency.steps=10",
        f"figures={tmp_path / 'figures'}",
    ).stdout
    for algo in ALGOS:
        assert f"| {algo} | 1 |" in out
    assert "| gtrxl (M=96) | 16 |" in out
    assert (sweep / "eval" / "success_curves.png").exists()
    assert (tmp_path / "figures" / "success_curves.png").exists()


def test_minigrid_memory_smoke(tmp_path):
    run_module(
        "ald.train",
        "experiment=smoke",
        "task=minigrid_memory",
        "total_steps=256",
        f"hydra.run.dir={tmp_path}",
    )
    assert _records(tmp_path)[-1]["step"] == 256


def test_rerun_resumes_and_a_different_config_is_refused(tmp_path):
    run_module("ald.train", "experiment=smoke", "total_steps=512", f"hydra.run.dir={tmp_path}")
    run_module("ald.train", "experiment=smoke", f"hydra.run.dir={tmp_path}")
    records = _records(tmp_path)
    assert [r["update"] for r in records] == list(range(2, 33, 2))  # 1–16, then 17–32
    resumed = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("resumed_from" in r for r in resumed)
    assert records[-1]["train_seconds"] > records[7]["train_seconds"]  # the clock carries over
    refused = run_module(
        "ald.train", "experiment=smoke", "seed=2", f"hydra.run.dir={tmp_path}", check=False
    )
    assert refused.returncode != 0 and "was written by a run with" in refused.stderr


@pytest.mark.parametrize(
    "override, field",
    [
        ("rl.lr=abc", "rl.lr"),
        ("rl.lr=-1", "rl.lr"),
        ("num_envs=0", "num_envs"),
        ("algo.name=ppo", "algo.name"),
        ("runtime.name=slurm", "runtime.name"),
        ("networks.gtrxl.heads=3", "networks.gtrxl.heads"),
        ("task.length=1", "task.length"),
        ("total_steps=8", "total_steps"),
        ("distill.context=0", "distill.context"),
    ],
)
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate(_compose(["experiment=smoke", override]))


def test_every_tier_and_algo_validates():
    for tier in ("smoke", "small", "paper"):
        for algo in ALGOS:
            validate(_compose([f"experiment={tier}", f"algo={algo}"]))


@contextlib.contextmanager
def _long_run(run_dir: Path, *overrides: str) -> Iterator[subprocess.Popen]:
    """A training run far longer than the test, in its own process group, killed (group and
    all) when the test ends, whatever happened."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ald.train",
            "experiment=smoke",
            "total_steps=10000000",
            "trainer.checkpoint_every=4",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: a test run started in the background (`make test &`, nohup) has
        # SIGINT ignored, the child would inherit that and Python would never raise
        # KeyboardInterrupt on Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list((run_dir / "checkpoints").glob("step_*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.5)


def _actors(pid: int) -> list[int]:
    """The learner's spawned actor processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    pids = [int(x) for x in out.split()]
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_ctrl_c_stops_learner_and_actors_and_the_run_resumes(tmp_path):
    with _long_run(tmp_path, "runtime.num_actors=2") as proc:
        _wait_for_checkpoint(tmp_path, proc)
        actors = _actors(proc.pid)
        assert len(actors) == 2
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        proc.communicate(timeout=60)
        assert _gone(actors)
    last = int(max((tmp_path / "checkpoints").glob("step_*.pt")).stem[5:])
    steps = (last + 4) * 4 * 8  # four more updates of num_envs × unroll steps
    run_module(
        "ald.train",
        "experiment=smoke",
        f"total_steps={steps}",
        "trainer.checkpoint_every=4",
        "runtime.num_actors=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert _records(tmp_path)[-1]["update"] == last + 4


def test_an_actor_crash_stops_the_run_with_an_error_and_keeps_the_checkpoint(tmp_path):
    with _long_run(tmp_path, "runtime.num_actors=2") as proc:
        _wait_for_checkpoint(tmp_path, proc)
        first, second = _actors(proc.pid)
        os.kill(first, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "exited with code -9" in stderr
        assert _gone([second])
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*.pt"))
    assert checkpoints and not list((tmp_path / "checkpoints").glob(".tmp_*"))
