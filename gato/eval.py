"""Evaluate a trained Gato (Reed et al. 2022, §4): act in every task on fresh seeds with a
demonstration prompt (and without, the ablation), normalised scores per task and the
fraction-of-tasks-above-x curve (Fig. 5), text perplexity on held-out documents, caption
accuracy and examples on held-out images, acting speed with the KV cache vs recompute.

    python -m gato.eval run=runs/gato/<run> [experiment=small] [figures=true]

Acting (§4.1): per timestep the observation tokens and the separator are fed, then the action
tokens are decoded one at a time, restricted to the task's action ids (discrete:
[0, num_actions); continuous: the 1,024 value bins), each fed back. `decode`: the most likely
token (greedy, the default), a sample (the paper's §2.2), or for continuous actions the mean of
the predicted bin distribution (executed as is; its bin is fed back). When the context
would overflow, the cache is rebuilt from the prompt and the most recent half of the timesteps.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.stats import summarize
from gato.captions import SIZE, caption_set
from gato.data import (
    EpisodeTokens,
    Piece,
    load_manifest,
    normalized,
    read_dataset,
    text_stream,
    tokenize_episode,
)
from gato.model import Gato
from gato.tasks import Task, get_task
from gato.tokenizer import (
    LOCAL_POSITIONS,
    PATCH,
    Continuous,
    Discrete,
    TextTokenizer,
    Vocab,
    detokenize_continuous,
    image_patches,
    offline_text,
    timestep_tokens,
    tokenize_continuous,
)
from gato.train import load_model

DECODE = ("greedy", "sample", "mean")  # how an action token is chosen (see `choose`)
THRESHOLDS = np.linspace(0.0, 1.0, 21)  # x of the fraction-of-tasks-above-x curve


def validate(cfg: DictConfig) -> None:
    if cfg.run is None:
        fail("run", None, "a gato.train run directory (holding best.pt)")
    if not (Path(cfg.run) / "best.pt").is_file():
        fail("run", cfg.run, "a gato.train run directory holding best.pt")
    for key in ("control", "babyai", "atari"):
        check_number(cfg.eval_episodes, key, "eval_episodes.", integer=True)
    check_number(cfg, "caption_images", integer=True, low=0, inclusive=True)
    check_number(cfg, "text_windows", integer=True, low=0, inclusive=True)
    check_number(cfg, "speed_steps", integer=True, low=0, inclusive=True)
    check_number(cfg, "threads", integer=True)
    check_choice(cfg, "decode", "", DECODE)
    if cfg.tasks is not None:
        for name in cfg.tasks:
            try:
                get_task(name)
            except ValueError as e:
                fail("tasks", name, str(e))


@dataclass
class Chunk:
    """Tokens fed to the model in one call: ids, local positions, is_image (n, L); frames
    (n, k, 3, 96, 96) of its k image slots per row, or None."""

    ids: torch.Tensor
    local_positions: torch.Tensor
    is_image: torch.Tensor
    frames: torch.Tensor | None = None

    @staticmethod
    def cat(chunks: list[Chunk]) -> Chunk:
        frames = [c.frames for c in chunks if c.frames is not None]
        return Chunk(
            torch.cat([c.ids for c in chunks], 1),
            torch.cat([c.local_positions for c in chunks], 1),
            torch.cat([c.is_image for c in chunks], 1),
            torch.cat(frames, 1) if frames else None,
        )

    @property
    def length(self) -> int:
        return self.ids.shape[1]


class Context:
    """The token window of n parallel episodes and its KV cache (or, without the cache, the
    whole window recomputed at every call: the speed baseline)."""

    def __init__(self, net: Gato, n: int, prompt: Chunk | None, use_cache: bool):
        self.net, self.n, self.use_cache = net, n, use_cache
        self.prompt = prompt
        self.steps: list[Chunk] = []  # complete timesteps since the prompt
        self.reset(keep=0)

    def reset(self, keep: int) -> torch.Tensor | None:
        """Restart the window from the prompt and the last `keep` complete timesteps."""
        self.steps = self.steps[len(self.steps) - keep :] if keep else []
        self.cache = self.net.new_cache(self.n) if self.use_cache else None
        self.fed: list[Chunk] = []
        self.length = 0
        start = ([self.prompt] if self.prompt is not None else []) + self.steps
        return self.feed(Chunk.cat(start)) if start else None

    def feed(self, chunk: Chunk) -> torch.Tensor:
        """Append `chunk`; the logits (n, V) after its last token."""
        self.fed.append(chunk)
        window = chunk if self.use_cache else Chunk.cat(self.fed)
        start = self.length if self.use_cache else 0
        patches = None
        if window.frames is not None:
            patches = image_patches(window.frames.flatten(0, 1))[0]
        logits = self.net(
            window.ids,
            window.local_positions,
            window.is_image,
            patches,
            start=start,
            cache=self.cache,
        )
        self.length += chunk.length
        return logits[:, -1]


def observation_chunk(
    task: Task, observations: list, vocab: Vocab, text: TextTokenizer | None
) -> Chunk:
    """The observation tokens and the separator of each of n observations (n, S_o)."""
    dummy = (
        Discrete([0] * task.action_tokens)
        if task.action_kind == "discrete"
        else Continuous(np.zeros(task.action_tokens, np.float32), compand=False)
    )
    rows = [timestep_tokens(task.observation_entries(o, text), dummy, vocab) for o in observations]
    a = task.action_tokens
    frames = None
    if rows[0].is_image.any():
        frames = torch.as_tensor(np.stack([task.image(o) for o in observations]))[:, None]
    return Chunk(
        torch.stack([r.ids[:-a] for r in rows]),
        torch.stack([r.local_positions[:-a] for r in rows]),
        torch.stack([r.is_image[:-a] for r in rows]),
        frames,
    )


def action_chunk(ids: torch.Tensor) -> Chunk:
    """Action tokens (n, 1): all share the action local position (App. C.3)."""
    return Chunk(
        ids, torch.full_like(ids, LOCAL_POSITIONS), torch.zeros_like(ids, dtype=torch.bool)
    )


def prompt_chunk(tokens: EpisodeTokens, n: int, context: int, fraction: float) -> Chunk:
    """The end of a demonstration episode, `fraction` of the context (as in training, §2.3)."""
    s = tokens.step_tokens
    steps = min(tokens.steps, max(1, int(fraction * context) // s))
    piece: Piece = tokens.window(tokens.steps - steps, tokens.steps)
    frames = None
    if piece.frames is not None:
        frames = piece.frames[None].expand(n, *piece.frames.shape)
    return Chunk(
        piece.ids.expand(n, -1),
        piece.local_positions.expand(n, -1),
        piece.is_image.expand(n, -1),
        frames,
    )


def choose(
    logits: torch.Tensor, task: Task, vocab: Vocab, decode: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """An action token (n, 1) from the task's allowed ids only, and the action value (n,) it
    stands for: the token itself (discrete), its bin centre, or with `decode="mean"` the
    expected bin centre under the model's distribution (whose bin is the token)."""
    continuous = task.action_kind == "continuous"
    allowed = vocab.continuous if continuous else range(task.num_actions)
    sub = logits[:, allowed.start : allowed.stop].float()
    if decode == "sample":
        idx = torch.multinomial(sub.softmax(-1), 1, generator=gen)
    elif decode == "mean" and continuous:
        centres = detokenize_continuous(torch.tensor(vocab.continuous), vocab, compand=False)
        value = sub.softmax(-1) @ centres.to(sub.device)
        return tokenize_continuous(value.cpu(), vocab, compand=False)[:, None], value.cpu()
    else:
        idx = sub.argmax(-1, keepdim=True)
    token = idx + allowed.start
    if not continuous:
        return token, token[:, 0].cpu()
    return token, detokenize_continuous(token[:, 0].cpu(), vocab, compand=False)


@torch.no_grad()
def act(
    net: Gato,
    task: Task,
    seeds: list[int],
    vocab: Vocab,
    text: TextTokenizer | None,
    prompt: EpisodeTokens | None,
    *,
    prompt_fraction: float,
    use_cache: bool = True,
    decode: str = "greedy",
    max_steps: int | None = None,
) -> dict:
    """Episodes of `task` from `reset(seed)` for each seed, acted by the model in parallel (one
    batch per observation length: BabyAI missions differ in length). Returns the returns and the
    acting speed."""
    envs = [task.make_env(s) for s in seeds]
    first = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
    lengths = [observation_chunk(task, [o], vocab, text).length for o in first]
    returns = np.zeros(len(seeds))
    actions: list[list] = [[] for _ in seeds]
    env_steps, seconds = 0, 0.0
    gen = torch.Generator().manual_seed(0)
    for length in sorted(set(lengths)):
        group = [i for i, n in enumerate(lengths) if n == length]
        obs = [first[i] for i in group]
        n = len(group)
        chunk_prompt = (
            None if prompt is None else prompt_chunk(prompt, n, net.cfg.context, prompt_fraction)
        )
        ctx = Context(net, n, chunk_prompt, use_cache)
        step_len = length + task.action_tokens
        p = 0 if chunk_prompt is None else chunk_prompt.length
        if p + step_len > net.cfg.context:
            raise ValueError(f"{task.name}: prompt + one timestep exceed the context")
        done = np.zeros(n, bool)
        pending = None  # the last action token of the previous timestep, fed with the next
        clock = time.perf_counter()
        for _ in range(max_steps or task.max_steps):
            o = observation_chunk(task, obs, vocab, text)
            if ctx.length + step_len > net.cfg.context:
                ctx.reset(keep=(net.cfg.context - p) // step_len // 2)
                pending = None  # the kept timesteps are complete
            logits = ctx.feed(o if pending is None else Chunk.cat([pending, o]))
            token, value = choose(logits, task, vocab, decode, gen)
            tokens, chosen = [token], [value]
            for _ in range(task.action_tokens - 1):
                logits = ctx.feed(action_chunk(tokens[-1].to(logits.device)))
                token, value = choose(logits, task, vocab, decode, gen)
                tokens.append(token)
                chosen.append(value)
            pending = action_chunk(tokens[-1].to(logits.device))
            ids = torch.cat(tokens, 1).to(logits.device)
            ctx.steps.append(Chunk.cat([o, action_chunk(ids)]))
            values = torch.stack(chosen, 1).numpy()
            for j, env in enumerate(envs[i] for i in group):
                if done[j]:
                    continue
                obs[j], reward, terminated, truncated, _ = env.step(task.env_action(values[j]))
                returns[group[j]] += reward
                actions[group[j]].append(ids[j].tolist())
                env_steps += 1
                done[j] = terminated or truncated
            if done.all():
                break
        seconds += time.perf_counter() - clock
    return {
        "returns": returns.tolist(),
        "actions": actions,
        "steps_per_s": env_steps / max(seconds, 1e-9),
    }


@torch.no_grad()
def text_perplexity(net: Gato, text: TextTokenizer, docs: list[str], windows: int) -> dict:
    """exp(mean next-token loss) over consecutive context windows of the held-out documents'
    token stream (at most `windows` of them)."""
    stream, ctx = text_stream(text, docs), net.cfg.context
    total, count = 0.0, 0
    for start in range(0, max(1, len(stream) - 1), ctx)[:windows]:
        ids = stream[start : start + ctx][None].to(net.head.weight.device)
        if ids.shape[1] < 2:
            break
        pos = torch.full_like(ids, LOCAL_POSITIONS)
        logits = net(ids, pos)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[0].float(), ids[0, 1:], reduction="sum")
        total, count = total + float(loss), count + ids.shape[1] - 1
    return {"perplexity": math.exp(total / max(count, 1)), "tokens": count}


@torch.no_grad()
def caption(net: Gato, text: TextTokenizer, frames: np.ndarray, max_tokens: int = 40) -> list[str]:
    """Greedy captions of images (n, 3, 96, 96): the patch slots, then text until end-of-text."""
    n = len(frames)
    slots = (SIZE // PATCH) ** 2
    device = net.head.weight.device
    chunk = Chunk(
        torch.zeros(n, slots, dtype=torch.long, device=device),
        torch.arange(slots, device=device).expand(n, -1),
        torch.ones(n, slots, dtype=torch.bool, device=device),
        torch.as_tensor(frames)[:, None].to(device),
    )
    ctx = Context(net, n, None, use_cache=True)
    logits = ctx.feed(chunk)
    out, done = [[] for _ in range(n)], torch.zeros(n, dtype=torch.bool)
    for _ in range(min(max_tokens, net.cfg.context - slots)):
        ids = logits[:, : text.vocab_size].argmax(-1, keepdim=True)
        for i in range(n):
            if not done[i]:
                if int(ids[i]) == text.eot_id:
                    done[i] = True
                else:
                    out[i].append(int(ids[i]))
        if done.all():
            break
        logits = ctx.feed(
            Chunk(
                ids, torch.full_like(ids, LOCAL_POSITIONS), torch.zeros_like(ids, dtype=torch.bool)
            )
        )
    return [text.decode(o) for o in out]


def fraction_above(scores: list[float]) -> list[float]:
    """Fraction of tasks whose normalised score is at least x, for x in THRESHOLDS (Fig. 5)."""
    s = np.asarray(scores)
    return [float((s >= x).mean()) for x in THRESHOLDS]


def evaluate_tasks(net, cfg, dataset: Path, manifest, vocab, text, prompt: bool) -> dict:
    """Every task: the returns on fresh seeds, the normalised score per episode; the prompt is
    the first validation episode of the task in `dataset`."""
    names = list(manifest["tasks"]) if cfg.tasks is None else list(cfg.tasks)
    out = {}
    for name in tqdm(names, desc="prompt" if prompt else "no prompt", disable=not cfg.progress):
        task, meta = get_task(name), manifest["tasks"][name]
        demo = None
        if prompt:
            val = read_dataset(dataset / "minari", task)[meta["split"]["val"][0]]
            demo = tokenize_episode(task, val, vocab, text)
        seeds = [manifest["eval_seed"] + i for i in range(cfg.eval_episodes[task.domain])]
        res = act(
            net,
            task,
            seeds,
            vocab,
            text,
            demo,
            prompt_fraction=cfg.prompt_fraction,
            decode=cfg.decode,
        )
        norm = [normalized(r, meta["scores"]) for r in res["returns"]]
        out[name] = {
            "success": float(np.mean(np.asarray(res["returns"]) > 0)),  # BabyAI: reached the goal
            "returns": res["returns"],
            "normalized": norm,
            "domain": task.domain,
            "scores": meta["scores"],
            "steps_per_s": res["steps_per_s"],
        }
    return out


def speed(net, task: Task, vocab, text, steps: int) -> dict:
    """Acting steps/s of one batch of 4 episodes, with the KV cache and recomputing."""
    seeds = [10**9 + i for i in range(4)]
    out = {}
    for name, use_cache in (("kv_cache", True), ("recompute", False)):
        out[name] = act(
            net,
            task,
            seeds,
            vocab,
            text,
            None,
            prompt_fraction=0.0,
            use_cache=use_cache,
            max_steps=steps,
        )["steps_per_s"]
    out["speedup"] = out["kv_cache"] / out["recompute"]
    return out


def _fmt(values: list[float], pct: bool = True) -> str:
    s = summarize(values)
    k = 100.0 if pct else 1.0
    std = "–" if math.isnan(s.std) else f"{k * s.std:.0f}" if pct else f"{s.std:.2f}"
    mean = f"{k * s.mean:.0f}%" if pct else f"{s.mean:.2f}"
    return f"{mean} ± {std}"


def table(results: dict) -> str:
    """The README's per-task table: returns and normalised scores, with and without prompt."""
    lines = [
        "| task | expert | random | return (prompt) | % of expert (prompt) | "
        "% of expert (no prompt) | success (prompt / no prompt) | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["prompt"].items():
        nop = results["no_prompt"].get(name)
        success = "—"
        if r["domain"] == "babyai":
            success = f"{100 * r['success']:.0f}% / {100 * nop['success']:.0f}%" if nop else "—"
        lines.append(
            f"| {name} | {r['scores']['expert']:.1f} | {r['scores']['random']:.1f} | "
            f"{_fmt(r['returns'], pct=False)} | {_fmt(r['normalized'])} | "
            f"{_fmt(nop['normalized']) if nop else '—'} | {success} | {len(r['returns'])} |"
        )
    return "\n".join(lines)


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from common.plotting import save

    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("prompt", "with prompt"), ("no_prompt", "without prompt")):
        means = [float(np.mean(r["normalized"])) for r in results[key].values()]
        ax.plot(100 * THRESHOLDS, fraction_above(means), marker="o", ms=3, label=label)
    ax.set_xlabel("% of expert score (x)")
    ax.set_ylabel("fraction of tasks ≥ x")
    ax.set_title(f"gato small: {len(results['prompt'])} tasks")
    ax.legend()
    paths.append(save(fig, out / "fraction_of_tasks.png"))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(results["prompt"])
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("prompt", "prompt"), ("no_prompt", "no prompt"))):
        vals = [100 * float(np.mean(results[key][n]["normalized"])) for n in names]
        ax.bar(x + 0.4 * k - 0.2, vals, 0.4, label=label)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [n.split("/")[1] for n in names], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("% of expert")
    ax.legend()
    paths.append(save(fig, out / "per_task.png"))
    return paths


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    net, payload = load_model(Path(cfg.run) / "best.pt", device)
    dataset = Path(payload["dataset"])
    manifest = load_manifest(dataset)
    text = TextTokenizer.load(dataset / "text_tokenizer.json")
    vocab = Vocab(text.vocab_size)
    results = {
        "prompt": evaluate_tasks(net, cfg, dataset, manifest, vocab, text, prompt=True),
        "no_prompt": evaluate_tasks(net, cfg, dataset, manifest, vocab, text, prompt=False),
    }
    docs = offline_text(manifest["text"]["chars"])
    results["text"] = text_perplexity(
        net, text, [docs[i] for i in manifest["text"]["split"]["test"]], cfg.text_windows
    )
    results["text"]["vocab_size"] = text.vocab_size
    caps = manifest["captions"]["test"]
    frames, truth = caption_set(min(cfg.caption_images, caps["n"]) or 1, caps["seed"])
    said = caption(net, text, frames) if cfg.caption_images else []
    results["captions"] = {
        "exact_match": float(np.mean([a == b for a, b in zip(said, truth, strict=False)]))
        if said
        else None,
        "n": len(said),
        "examples": [{"truth": t, "model": m} for t, m in zip(truth[:5], said[:5], strict=False)],
    }
    if cfg.speed_steps:
        task = get_task(cfg.speed_task)
        results["speed"] = {
            "task": cfg.speed_task,
            **speed(net, task, vocab, text, cfg.speed_steps),
        }
    means = {n: float(np.mean(r["normalized"])) for n, r in results["prompt"].items()}
    results["fraction_above"] = {
        "x": THRESHOLDS.tolist(),
        "prompt": fraction_above(list(means.values())),
    }
    results["model"] = {"params": net.num_parameters(), **payload["config"]}
    out = Path(cfg.run)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    print(
        f"text perplexity {results['text']['perplexity']:.2f} on {results['text']['tokens']} "
        f"held-out tokens (vocab {text.vocab_size}); caption exact match "
        f"{results['captions']['exact_match']} on {results['captions']['n']}"
    )
    for ex in results["captions"]["examples"]:
        print(f"  caption: {ex['model']!r}  (truth {ex['truth']!r})")
    if "speed" in results:
        sp = results["speed"]
        print(
            f"acting {sp['task']}: {sp['kv_cache']:.0f} steps/s with the KV cache, "
            f"{sp['recompute']:.0f} recomputing ({sp['speedup']:.1f}x)"
        )
    paths = plot(results, out)
    if cfg.figures:
        paths += plot(results, Path(__file__).parent / "figures")
    print(f"[gato.eval] {out / 'eval.json'}; figures: {', '.join(map(str, paths))}")
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
