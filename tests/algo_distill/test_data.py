"""The collected histories replay exactly in the environment, and windows span several episodes."""

import json

import numpy as np
import pytest
import torch

from algo_distill.collect import make_env
from algo_distill.collect import run as collect
from algo_distill.data import (
    NO_ACTION,
    HistoryWindows,
    load_histories,
    load_manifest,
    subsample_episodes,
)
from tests.algo_distill.conftest import compose_config


def test_round_trip_replays_in_the_environment(smoke_dataset):
    manifest = load_manifest(smoke_dataset)
    cfg = compose_config("collect", ["experiment=smoke"])
    length = cfg.env.episode_len
    for kind, episodes in (("learning", cfg.history_episodes), ("expert", cfg.expert_episodes)):
        data = load_histories(smoke_dataset, kind)
        assert data["obs"].shape == (cfg.num_histories, episodes * length)
        assert data["dones"].sum(1).tolist() == [episodes] * cfg.num_histories
        # replaying the logged actions reproduces the logged observations and rewards
        env = make_env(cfg.env, data["tasks"])
        for episode in range(episodes):
            obs, _ = env.reset()
            for t in range(length):
                i = episode * length + t
                assert np.array_equal(obs, data["obs"][:, i])
                obs, reward, _, _, _ = env.step(data["actions"][:, i].astype(np.int64))
                assert np.array_equal(reward, data["rewards"][:, i])
        per_episode = data["rewards"].reshape(cfg.num_histories, episodes, length).sum(2)
        logged = [h["returns"] for h in manifest["histories"][kind]]
        assert np.array_equal(per_episode, np.array(logged))
        assert [h["task"] for h in manifest["histories"][kind]] == data["tasks"].tolist()
    split = {n: {tuple(t) for t in manifest[f"{n}_tasks"]} for n in ("train", "val", "test")}
    assert split["val"] and split["test"] and split["train"]
    assert not split["train"] & (split["val"] | split["test"]) and not split["val"] & split["test"]
    # every history learns a training task
    assert {tuple(h["task"]) for h in manifest["histories"]["learning"]} <= split["train"]
    assert json.loads((smoke_dataset / "manifest.json").read_text())["env"]["name"] == "dark_room"


def test_window_spans_several_episodes(smoke_dataset):
    length = load_manifest(smoke_dataset)["env"]["episode_len"]
    data = load_histories(smoke_dataset, "learning")
    windows = HistoryWindows.from_dataset(smoke_dataset, "learning", 3 * length, length)
    tokens, actions = windows.sample(64, torch.Generator().manual_seed(0))
    assert actions.shape == (64, 3 * length)
    starts = tokens["timestep"] == 0
    # a window of 3 episodes' steps holds exactly 3 episode starts, wherever it begins
    assert starts.sum(1).tolist() == [3] * 64
    assert torch.all(tokens["prev_action"][starts] == NO_ACTION)
    assert torch.all(tokens["prev_reward"][starts] == 0)
    # elsewhere the previous action is the target of the step before
    inside = ~starts[:, 1:]
    assert torch.equal(tokens["prev_action"][:, 1:][inside], actions[:, :-1][inside])
    # every window is a contiguous piece of some history
    obs = torch.from_numpy(data["obs"].astype(np.int64))
    for row in range(4):
        found = [
            (i, s)
            for i in range(len(obs))
            for s in range(obs.shape[1] - 3 * length + 1)
            if torch.equal(obs[i, s : s + 3 * length], tokens["obs"][row])
        ]
        assert found


def test_collection_is_deterministic_under_a_seed(smoke_dataset, tmp_path):
    cfg = compose_config("collect", ["experiment=smoke"])
    collect(cfg, tmp_path / "again")
    for kind in ("learning", "expert"):
        first, again = load_histories(smoke_dataset, kind), load_histories(tmp_path / "again", kind)
        for key, value in first.items():
            assert np.array_equal(value, again[key]), (kind, key)
    cfg.seed = 2
    collect(cfg, tmp_path / "other")
    other = load_histories(tmp_path / "other", "learning")
    assert not np.array_equal(
        other["actions"], load_histories(smoke_dataset, "learning")["actions"]
    )


def test_subsampled_histories_keep_every_kth_episode_in_order(smoke_dataset):
    length = load_manifest(smoke_dataset)["env"]["episode_len"]
    data = load_histories(smoke_dataset, "learning")
    kept = subsample_episodes(data, length, 2)
    episodes = data["obs"].shape[1] // length  # 6 in the smoke tier: episodes 0, 2, 4 are kept
    assert kept["obs"].shape == (len(data["obs"]), 3 * length)
    for key in ("obs", "actions", "rewards", "dones"):
        per_episode = data[key].reshape(len(data[key]), episodes, length)
        assert np.array_equal(kept[key].reshape(len(data[key]), 3, length), per_episode[:, ::2])
    assert np.array_equal(kept["returns"], data["returns"][:, [0, 2, 4]])
    assert np.array_equal(kept["tasks"], data["tasks"])
    assert subsample_episodes(data, length, 1) is data
    # the training windows are drawn from the subsampled histories
    windows = HistoryWindows.from_dataset(smoke_dataset, "learning", 2 * length, length, 2)
    assert windows.actions.shape == (len(data["obs"]), 3 * length)
    assert torch.equal(windows.tokens["obs"], torch.from_numpy(kept["obs"].astype(np.int64)))
    with pytest.raises(ValueError, match="after keeping every 4-th episode"):
        HistoryWindows.from_dataset(smoke_dataset, "learning", 3 * length, length, 4)
