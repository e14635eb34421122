"""Gato's BabyAI domain: the bot clears its threshold; cells, direction and mission tokens."""

from pathlib import Path

import pytest
import torch

from gato import babyai
from gato.data import observation_row, read_dataset, run_episode, write_dataset
from gato.tokenizer import Vocab, offline_text, train_text_tokenizer


@pytest.fixture(scope="module")
def text():
    return train_text_tokenizer(offline_text(30000), 1024)


@pytest.mark.parametrize("task", babyai.tasks(), ids=lambda t: t.name)
def test_bot_clears_its_threshold_and_tokens(task, text, tmp_path: Path):
    env = task.make_env(0)
    episodes = [run_episode(task, env, task.make_expert(env), s) for s in range(4)]
    assert min(e.ret for e in episodes) >= babyai.EXPERT_MIN_RETURN[task.name]
    obs = episodes[0].observation(0)
    row = observation_row(task, obs, episodes[0].actions[0], Vocab(1024), text)
    mission = text.encode(obs["mission"])
    assert len(row) == 49 + 1 + len(mission) + 2  # cells, direction, mission, '|', action
    assert row.ids[:49].max() < 198
    # loss mask: the mission tokens and the action, nothing else
    want = torch.zeros(len(row), dtype=torch.bool)
    want[50 : 50 + len(mission)] = True
    want[-1] = True
    assert torch.equal(row.loss_mask, want)
    assert text.decode(row.ids[50 : 50 + len(mission)].tolist()) == obs["mission"]
    write_dataset(tmp_path, task, episodes, env, {"random": 0.1, "expert": 0.9})
    back = read_dataset(tmp_path, task)
    assert back[1].observation(2)["mission"] == episodes[1].observation(2)["mission"]
    assert [e.ret for e in back] == pytest.approx([e.ret for e in episodes])


def test_mission_needs_the_tokenizer():
    task = babyai.tasks()[0]
    obs, _ = task.make_env(0).reset(seed=0)
    with pytest.raises(ValueError, match="text tokenizer"):
        task.observation_entries(obs, None)
