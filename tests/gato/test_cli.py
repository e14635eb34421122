"""gato's real entry points (collect → train → eval) as a user runs them, KV-cache acting =
recompute, resume, bad configs."""

import json

import pytest
import torch

from gato.collect import validate as validate_collect
from gato.data import load_manifest, read_dataset, tokenize_episode
from gato.eval import act, caption, choose
from gato.eval import validate as validate_eval
from gato.model import Gato, GatoConfig
from gato.tasks import get_task
from gato.tokenizer import TextTokenizer, Vocab
from gato.train import run, validate
from tests.entry_points import run_module
from tests.gato.conftest import compose_config


def test_smoke_collect_train_eval(tmp_path):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    out = run_module("gato.collect", "experiment=smoke", f"hydra.run.dir={data}").stdout
    assert "steps/s per domain" in out
    manifest = load_manifest(data)
    assert set(manifest["steps_per_s"]) == {"control", "babyai", "atari"}
    run_module("gato.train", "experiment=smoke", f"dataset={data}", f"hydra.run.dir={run_dir}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and "val/captions" in records[-1]
    out = run_module("gato.eval", "experiment=smoke", f"run={run_dir}").stdout
    assert "| control/cartpole-swingup |" in out and "| atari/Breakout |" in out
    assert "text perplexity" in out and "with the KV cache" in out
    results = json.loads((run_dir / "eval.json").read_text())
    assert len(results["prompt"]["babyai/GoToLocal"]["returns"]) == 3
    assert (run_dir / "fraction_of_tasks.png").is_file()


def _tiny(text: TextTokenizer, context: int) -> Gato:
    cfg = GatoConfig(
        text_size=text.vocab_size,
        dim=64,
        layers=1,
        heads=2,
        mlp_dim=64,
        context=context,
        patch_channels=8,
    )
    return Gato(cfg).eval()


@pytest.mark.parametrize(
    "name, prompt",
    [("control/Reacher-v5", True), ("babyai/GoToLocal", False), ("atari/Breakout", True)],
)
def test_kv_cache_acting_equals_recompute(smoke_dataset, name, prompt):
    """Same actions, so the same returns, through several context rebuilds (context 96)."""
    torch.manual_seed(0)
    text = TextTokenizer.load(smoke_dataset / "text_tokenizer.json")
    vocab = Vocab(text.vocab_size)
    net = _tiny(text, 96)
    task = get_task(name)
    demo = None
    if prompt:
        episode = read_dataset(smoke_dataset / "minari", task)[0]
        demo = tokenize_episode(task, episode, vocab, text)
    seeds = [7, 8, 9]
    kw = dict(prompt_fraction=0.3, max_steps=12, decode="sample")
    cached = act(net, task, seeds, vocab, text, demo, use_cache=True, **kw)
    full = act(net, task, seeds, vocab, text, demo, use_cache=False, **kw)
    assert cached["returns"] == pytest.approx(full["returns"])
    assert cached["actions"] == full["actions"]


@pytest.mark.parametrize("decode", ["greedy", "sample", "mean"])
def test_choose_keeps_to_the_action_ids_and_returns_their_value(decode):
    """Logits split evenly between the bins either side of 0 (511, 512) and large outside the
    action ids: every mode picks one of the two bins; its value is that bin's centre, or with
    `mean` the distribution's mean, 0, whose bin is 512."""
    vocab = Vocab(1024)
    task = get_task("control/InvertedPendulum-v5")
    logits = torch.full((3, vocab.size), -30.0)
    logits[:, : vocab.text_size] = 50.0  # text ids: never an action
    logits[:, vocab.continuous.start + 511 : vocab.continuous.start + 513] = 5.0
    gen = torch.Generator().manual_seed(0)
    token, value = choose(logits, task, vocab, decode, gen)
    assert token.shape == (3, 1) and value.shape == (3,)
    bins = token[:, 0] - vocab.continuous.start
    assert set(bins.tolist()) <= {511, 512}
    if decode == "mean":
        assert bins.tolist() == [512] * 3 and value.abs().max() < 1e-6
    else:
        assert value.tolist() == pytest.approx([(b - 511.5) / 512 for b in bins.tolist()])


@pytest.mark.parametrize("favourite", ["eot", "a"])
def test_caption_decoding_stops_at_end_of_text(smoke_dataset, favourite):
    """A model whose every hidden state is all-ones and whose output row of one id is all-ones
    emits that id: end-of-text gives an empty caption at once, any other text id repeats until
    `max_tokens`."""
    text = TextTokenizer.load(smoke_dataset / "text_tokenizer.json")
    net = _tiny(text, 64)
    token = text.eot_id if favourite == "eot" else text.encode("a")[0]
    with torch.no_grad():
        net.norm.weight.zero_()
        net.norm.bias.fill_(1.0)
        net.head.weight.zero_()
        net.head.weight[token] = 1.0
    frames = torch.zeros(2, 3, 96, 96, dtype=torch.uint8).numpy()
    want = "" if favourite == "eot" else text.decode([token] * 5)
    assert caption(net, text, frames, max_tokens=5) == [want, want]


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
    with pytest.raises(ValueError, match="was written by a run with another configuration"):
        run(compose_config("train", [*overrides, "model.dim=32", "model.heads=1"]), tmp_path / "b")


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("collect", "tasks=[control/nope]", "tasks='control/nope' is not valid"),
        ("collect", "episodes.atari=0", "episodes.atari=0 is not valid"),
        ("collect", "text.vocab_size=100", "text.vocab_size=100 is not valid"),
        ("train", "trainer.lr=abc", "trainer.lr='abc' is not valid"),
        ("train", "model.heads=3", "model.heads=3 is not valid"),
        ("train", "trainer.parallel=zero", "trainer.parallel='zero' is not valid"),
        ("train", "model.bin_init=smooth", "model.bin_init='smooth' is not valid"),
        ("train", "mixture.text=-1", "mixture.text=-1 is not valid"),
        ("eval", "eval_episodes.control=0", "eval_episodes.control=0 is not valid"),
        ("eval", "tasks=[atari/Nope]", "tasks='atari/Nope' is not valid"),
        ("eval", "decode=beam", "decode='beam' is not valid"),
    ],
)
def test_bad_config_names_the_field(smoke_dataset, tmp_path, name, override, message):
    (tmp_path / "best.pt").touch()
    base = {"collect": [], "train": [f"dataset={smoke_dataset}"], "eval": [f"run={tmp_path}"]}
    cfg = compose_config(name, [*base[name], *override.split()])
    check = {"collect": validate_collect, "train": validate, "eval": validate_eval}[name]
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        check(cfg)


def test_bad_config_fails_before_any_work(tmp_path):
    result = run_module(
        "gato.collect", "tasks=[atari/Nope]", f"hydra.run.dir={tmp_path / 'c'}", check=False
    )
    assert result.returncode != 0 and "tasks='atari/Nope' is not valid" in result.stderr
    assert not (tmp_path / "c" / "manifest.json").exists()
