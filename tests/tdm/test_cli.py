"""The real entry points (collect → train → eval) as a user runs them, resume, bad configs."""

import json

import numpy as np
import pytest
import torch

from tdm.collect import split_episodes
from tdm.collect import validate as validate_collect
from tdm.data import load_manifest, load_task
from tdm.eval import validate as validate_eval
from tdm.train import run, validate
from tests.entry_points import run_module
from tests.tdm.conftest import compose_config


def test_smoke_collect_train_eval(tmp_path):
    data, sweep = tmp_path / "data", tmp_path / "sweep"
    out = run_module("tdm.collect", "experiment=smoke", f"hydra.run.dir={data}").stdout
    assert "cartpole-swingup: expert" in out
    manifest = load_manifest(data)
    assert manifest["tasks"]["cartpole-swingup"]["scores"]["expert"] > 0
    assert (data / "minari" / "tdm" / "cartpole-swingup" / "mixed-v0").is_dir()
    run_module(
        "tdm.train",
        "-m",
        "experiment=smoke",
        "model=tdm,policy,mlp,ensemble",
        f"dataset={data}",
        f"hydra.sweep.dir={sweep}",
    )
    for model in ("tdm", "policy", "mlp", "ensemble"):
        run_dir = sweep / f"{model}-seed1"
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert records[0]["type"] == "config" and records[-1]["step"] == 4
        assert (run_dir / "best.pt").is_file()
    out = run_module(
        "tdm.eval",
        "experiment=smoke",
        f"runs={sweep}",
        f"dataset={data}",
        f"figures={tmp_path / 'figures'}",
    ).stdout
    for row in ("| true simulator", "| tdm |", "| mlp |", "| ensemble |", "| policy |"):
        assert row in out
    assert (tmp_path / "figures" / "kstep_cartpole-swingup.png").is_file()
    assert (tmp_path / "figures" / "planning_cartpole-swingup.png").is_file()
    results = json.loads(next(sweep.glob("eval-*/results.json")).read_text())
    tdm = results["tasks"]["cartpole-swingup"]["models"]["tdm"]
    assert (
        len(tdm["kstep"][0]) == 3
        and "kstep" not in results["tasks"]["cartpole-swingup"]["models"]["policy"]
    )


def test_resume_continues_the_same_run(smoke_dataset, tmp_path):
    overrides = ["experiment=smoke", f"dataset={smoke_dataset}"]
    run(compose_config("train", overrides), tmp_path / "a")
    run(compose_config("train", overrides), tmp_path / "b")
    (tmp_path / "b" / "checkpoints" / "step_00000004.pt").unlink()  # interrupted after step 2
    run(compose_config("train", overrides), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoints" / "step_00000004.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "step_00000004.pt", weights_only=True)
    for key, value in a["models"]["model"].items():
        assert torch.equal(value, b["models"]["model"][key]), key
    with pytest.raises(ValueError, match="was written by a run with"):
        run(compose_config("train", [*overrides, "model.dim=32", "model.heads=1"]), tmp_path / "b")


def test_splits_are_disjoint_stratified_and_fixed_by_seed(smoke_dataset):
    data = load_task(smoke_dataset, "cartpole-swingup")
    ids = [i for split in data.split.values() for i in split]
    assert sorted(ids) == list(range(data.num_episodes))
    meta = [{"policy": p, "noise": 0.0} for p in ["random"] * 10 + ["expert"] * 30]
    a = split_episodes(meta, np.random.default_rng(0), 0.1, 0.1)
    b = split_episodes(meta, np.random.default_rng(0), 0.1, 0.1)
    assert a == b and len(a["val"]) == len(a["test"]) == 4
    for split in ("val", "test"):  # both policies in every held-out split
        assert {meta[i]["policy"] for i in a[split]} == {"random", "expert"}


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("collect", "task=cartpole-balance", "task='cartpole-balance' is not valid"),
        ("collect", "episodes.expert=0", "episodes.expert=0 is not valid"),
        ("collect", "expert.horizon=0", "expert.horizon=0 is not valid"),
        ("train", "model.bins=1", "model.bins=1 is not valid"),
        ("train", "model.lr=abc", "model.lr='abc' is not valid"),
        ("train", "model.context=16", "model.context=16 is not valid"),
        ("train", "model=mlp model.members=0", "model.members=0 is not valid"),
        ("eval", "planner.horizon=0", "planner.horizon=0 is not valid"),
        ("eval", "planner.kind=mppi", "planner.kind='mppi' is not valid"),
    ],
)
def test_bad_config_names_the_field(name, override, message):
    base = {"collect": [], "train": ["dataset=x"], "eval": ["runs=x", "dataset=x"]}[name]
    cfg = compose_config(name, [*base, *override.split()])
    check = {"collect": validate_collect, "train": validate, "eval": validate_eval}[name]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(cfg)


def test_bad_config_fails_before_any_work(tmp_path):
    result = run_module("tdm.collect", "task=nope", f"hydra.run.dir={tmp_path / 'c'}", check=False)
    assert result.returncode != 0 and "task='nope' is not valid" in result.stderr
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_candidate_ranking_is_spearmans_rho():
    from tdm.eval import spearman

    x = np.array([0.1, 3.0, -2.0, 7.0, 0.5])
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # any increasing map of the scores
    assert spearman(x, -x) == pytest.approx(-1.0)
    # ranks (2, 4, 1, 5, 3) vs (1, 2, 3, 4, 5): 1 - 6 · Σd² / (n (n² - 1)) with Σd² = 14
    assert spearman(x, np.arange(5.0)) == pytest.approx(1 - 6 * 14 / (5 * 24))
