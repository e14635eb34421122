"""Long-context evaluations of the Gemini 1.5 report (§5) on a trained run or any local
Hugging Face causal LM, through the model-agnostic harness (gemini_longctx.harness).

    python -m gemini_longctx.eval run=runs/gemini_longctx/<date-time>            # every task
    python -m gemini_longctx.eval run=<run> task=niah lengths=[1024,4096] allow_beyond_context=true
    python -m gemini_longctx.eval hf_path=<local HF model dir> task=nll   # pip install -e .[hf]

Tasks: `nll` (cumulative NLL by position with the power-law fit, prose and code), `niah`
(needle-in-a-haystack depth × length grid), `multi_needle`, `mrcr`, `memory` (peak memory and
tokens/s of streaming vs a naive full-context forward, each length in a fresh process). Writes
`<output>/<task>.json` and PNGs (output defaults to `<run>/eval`), prints markdown tables; with
`figures=<dir>` the headline PNGs are copied there too (the README's figures).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import latest_checkpoint, load_checkpoint
from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.plotting import copy_figures, plot_curves
from gemini_longctx import harness
from gemini_longctx.data import SPLITS, BPETokenizer, Document, load_corpus, split_documents
from gemini_longctx.model import LongContextLM, ModelConfig
from gemini_longctx.train import TOKENIZER_FILE

TASKS = ("nll", "niah", "multi_needle", "mrcr", "memory")

# Needle cities (the public harness draws from a list like this), split into validation and
# test halves by a fixed permutation so a choice made on validation never sees a test city.
CITIES = (
    "Chicago Yangon Antananarivo Colombo Almaty Sydney Mexico Seattle Lagos Amsterdam Belgrade "
    "Cairo Baghdad Damascus Kigali Dakar Sofia Victoria Tashkent Mumbai Barcelona Havana Lima "
    "Oslo Nairobi Hanoi Dublin Helsinki Kyiv Lisbon Manila Montreal Riga Santiago Seoul Taipei "
    "Tehran Tunis Vienna Warsaw Zagreb Athens Bogota Budapest Caracas Doha Jakarta Karachi Quito "
    "Kathmandu Luanda Minsk Muscat Prague Rabat Tbilisi Ulaanbaatar Vilnius Windhoek Yerevan"
).split()


def city_split(split: str) -> list[str]:
    order = np.random.default_rng(0).permutation(len(CITIES))
    half = len(CITIES) // 2
    return [CITIES[i] for i in (order[:half] if split == "val" else order[half:])]


class ModelSession:
    """A `harness.Session` on our model: one KV cache per block, fed chunk by chunk."""

    def __init__(self, model: LongContextLM, max_len: int):
        self.model, self.caches, self.length = model, model.new_caches(1, max_len), 0

    @torch.no_grad()
    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        device = self.model.head.weight.device
        out = self.model(ids[None].to(device), start=self.length, caches=self.caches)
        self.length += ids.numel()
        return out.logits[0].float().cpu()

    def rewind(self, length: int) -> None:
        for cache in self.caches:
            cache.rewind(length)
        self.length = length


class ModelLM:
    """Our model behind the harness's `LM` interface."""

    def __init__(self, model: LongContextLM):
        self.model = model.eval()
        self.vocab_size, self.max_context = model.cfg.vocab_size, model.cfg.max_context

    def start(self, max_len: int) -> ModelSession:
        return ModelSession(self.model, max_len)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The whole context at once (the naive baseline's forward)."""
        return self.model(ids.to(self.model.head.weight.device)).logits.float().cpu()


def load_run(run_dir: Path, device: torch.device) -> tuple[ModelLM, BPETokenizer, DictConfig]:
    """The latest checkpoint of a training run, its tokeniser and its config."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or not (run_dir / TOKENIZER_FILE).exists():
        raise FileNotFoundError(f"{run_dir} has no checkpoint and tokenizer.json of a train run")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = BPETokenizer.load(run_dir / TOKENIZER_FILE)
    model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **OmegaConf.to_container(cfg.model))
    model = LongContextLM(model_cfg).to(device)
    load_checkpoint(ckpt, models={"model": model}, restore_rng=False, map_location=device)
    return ModelLM(model), tokenizer, cfg


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any work starts, naming the field."""
    check_choice(cfg, "task", "", (*TASKS, "all"))
    if (cfg.run is None) == (cfg.hf_path is None):
        raise ValueError("give exactly one of run=<train run dir> and hf_path=<HF model dir>")
    check_choice(cfg, "split", "", SPLITS[1:])
    lengths = list(cfg.lengths)
    if not lengths or any(not isinstance(n, int) or n < 64 for n in lengths):
        fail("lengths", lengths, "integers >= 64")
    for key in ("depths", "trials", "chunk"):
        check_number(cfg, key, integer=True)


def _check_lengths(cfg: DictConfig, lm, lengths: list[int], field: str) -> None:
    """A context longer than the model was trained for needs allow_beyond_context=true."""
    limit = lm.trained_context
    if limit is not None and max(lengths) > limit and not cfg.allow_beyond_context:
        raise ValueError(
            f"{field}={lengths} goes beyond the model's trained context {limit}: set "
            "allow_beyond_context=true to evaluate there (the report's extrapolation question)"
        )


def _corpus(data: DictConfig) -> dict[str, list[Document]]:
    docs = load_corpus(list(data.prose), data.code_bytes, data.cache_dir)
    return split_documents(docs, data.val_fraction, data.test_fraction, data.split_seed)


def _haystack(docs: list[Document]) -> str:
    """The split's essays concatenated (the public harness's haystack); the split's prose of
    any source if it has no essays (e.g. a smoke run trained on pydoc topics only)."""
    prose = [d for d in docs if d.kind == "prose"]
    essays = [d for d in prose if d.source == "essays"] or prose
    return "\n\n".join(d.text for d in essays)


def _write(out: Path, name: str, payload: dict) -> None:
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1, default=float))


def task_nll(cfg, lm, tokenizer, docs, out: Path) -> list[str]:
    length = cfg.nll.length
    _check_lengths(cfg, lm, [length], "nll.length")
    rows, payload = [], {}
    for kind in ("prose", "code"):
        ids = [tokenizer.encode(d.text) for d in docs if d.kind == kind]
        long_docs = [i for i in ids if len(i) >= length][: cfg.nll.max_docs]
        if not long_docs:
            rows.append(f"| {kind} | 0 | no {cfg.split} document has {length} tokens | | |")
            continue
        nll = harness.nll_by_position(lm, long_docs, length, cfg.chunk)
        cumulative = harness.cumulative_average(nll)
        x = np.arange(1, len(cumulative) + 1)
        fit = harness.fit_power_law(x, cumulative)
        harness.plot_nll_by_position(cumulative, out / f"nll_{kind}.png", fit, label=kind)
        payload[kind] = {
            "docs": len(long_docs),
            "cumulative_nll": cumulative.tolist(),
            "fit": vars(fit),
        }
        rows.append(
            f"| {kind} | {len(long_docs)} | {cumulative[-1]:.3f} | "
            f"{fit.alpha:.3g}·x^{fit.beta:.3g} + {fit.gamma:.3g} | {fit.r2:.4f} |"
        )
    _write(out, "nll", payload)
    return [
        f"### NLL by position ({cfg.split} documents of ≥ {length} tokens)",
        "| kind | docs | cumulative NLL at the end | fit L(x) = α·x^β + γ | R² |",
        "|---|---|---|---|---|",
        *rows,
    ]


def task_niah(cfg, lm, tokenizer, docs, out: Path) -> list[str]:
    lengths = list(cfg.lengths)
    _check_lengths(cfg, lm, lengths, "lengths")
    result = harness.needle_in_haystack(
        lm,
        tokenizer,
        _haystack(docs),
        city_split(cfg.split),
        lengths,
        depths=cfg.depths,
        trials=cfg.trials,
        seed=cfg.seed,
        chunk=cfg.chunk,
    )
    harness.plot_needle_heatmap(result, out / "niah.png")
    _write(
        out,
        "niah",
        {
            "lengths": lengths,
            "depths": result.depths.tolist(),
            "accuracy": result.accuracy.tolist(),
            "trials": [vars(t) for t in result.trials],
        },
    )
    limit = lm.trained_context
    rows = []
    for j, n in enumerate(lengths):
        kinds = Counter(
            harness.classify_answer(t.answer, t.number) for t in result.trials if t.length == n
        )
        rows.append(
            f"| {n}{' (beyond training)' if limit and n > limit else ''} | "
            f"{100 * result.accuracy[:, j].mean():.1f}% | "
            f"{100 * result.accuracy[:, j].min():.0f}% | "
            + " | ".join(str(kinds[k]) for k in harness.ANSWER_KINDS[1:])
            + " |"
        )
    return [
        f"### Needle in a haystack ({cfg.split} essays and cities, {cfg.depths} depths × "
        f"{cfg.trials} trial(s) per cell)",
        "| length (tokens) | accuracy (all depths) | worst depth | wrong: "
        + " | ".join(harness.ANSWER_KINDS[1:])
        + " |",
        "|---|---|---|" + "---|" * (len(harness.ANSWER_KINDS) - 1),
        *rows,
    ]


def task_multi_needle(cfg, lm, tokenizer, docs, out: Path) -> list[str]:
    lengths = list(cfg.multi_needle.lengths)
    _check_lengths(cfg, lm, lengths, "multi_needle.lengths")
    result = harness.multi_needle(
        lm,
        tokenizer,
        _haystack(docs),
        city_split(cfg.split),
        lengths,
        needles=cfg.multi_needle.needles,
        trials=cfg.trials,
        seed=cfg.seed,
        chunk=cfg.chunk,
    )
    _write(out, "multi_needle", {"lengths": lengths, "recall": result.recall.tolist()})
    rows = [
        f"| {n} | {cfg.multi_needle.needles} | {100 * r:.1f}% |"
        for n, r in zip(lengths, result.recall, strict=True)
    ]
    return ["### Multi-needle recall", "| length | needles | recall |", "|---|---|---|", *rows]


def task_mrcr(cfg, lm, tokenizer, docs, out: Path) -> list[str]:
    lengths = list(cfg.mrcr.lengths)
    _check_lengths(cfg, lm, lengths, "mrcr.lengths")
    result = harness.mrcr(
        lm,
        tokenizer,
        _haystack(docs),
        lengths,
        trials=cfg.mrcr.trials,
        seed=cfg.seed,
        chunk=cfg.chunk,
    )
    _write(
        out,
        "mrcr",
        {
            "lengths": lengths,
            "score": result.score.tolist(),
            "trials": [vars(t) for t in result.trials],
        },
    )
    rows = [
        f"| {n} | {cfg.mrcr.trials} | {s:.3f} |" for n, s in zip(lengths, result.score, strict=True)
    ]
    return [
        "### MRCR-style (SequenceMatcher ratio)",
        "| length | trials | score |",
        "|---|---|---|",
        *rows,
    ]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _PeakRSS:
    """Peak resident memory of this process above its level at entry, sampled every ms (the
    kernel's ru_maxrss cannot be reset and would include the model loading)."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.bytes = self.peak - self.base


def _measure(args: tuple) -> dict:
    """In a fresh process: peak memory above the loaded model, and tokens/s, of one pass over
    `length` tokens: streamed through the KV cache in chunks, or one naive full forward."""
    source, mode, length, chunk, device_name, threads = args
    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    lm, _, _ = load_run(Path(source), device)
    ids = torch.randint(0, lm.vocab_size, (length,))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with _PeakRSS() as rss:
        t0 = time.perf_counter()
        if mode == "streaming":
            session = lm.start(length + 16)
            harness.stream_nll(session, ids, chunk)
            prefill_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            for token in torch.randint(0, lm.vocab_size, (16,)):
                session.feed(token[None])
            decode = 16 / (time.perf_counter() - t1)
        else:
            with torch.no_grad():
                lm.forward(ids[None])
            prefill_s, decode = time.perf_counter() - t0, float("nan")
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else rss.bytes
    return {
        "mode": mode,
        "length": length,
        "peak_mib": peak / 2**20,
        "prefill_tokens_per_s": length / prefill_s,
        "decode_tokens_per_s": decode,
    }


def task_memory(cfg, lm, tokenizer, docs, out: Path) -> list[str]:
    if cfg.run is None:
        raise ValueError("task=memory measures our model: give run=<train run dir>")
    lengths = list(cfg.memory.lengths)
    jobs = [("streaming", n) for n in lengths]
    jobs += [("naive", n) for n in lengths if n <= cfg.memory.naive_max]
    context = mp.get_context("spawn")
    results = []
    for mode, n in jobs:
        with context.Pool(1) as pool:
            args = (cfg.run, mode, n, cfg.chunk, cfg.device, cfg.threads)
            results.append(pool.apply(_measure, (args,)))
    _write(out, "memory", {"results": results})
    curves = {
        mode: (
            [r["length"] for r in results if r["mode"] == mode],
            [r["peak_mib"] for r in results if r["mode"] == mode],
        )
        for mode in ("streaming", "naive")
    }
    plot_curves(
        curves,
        out / "memory.png",
        xlabel="context length (tokens)",
        ylabel="peak memory above the model (MiB)",
    )
    rows = [
        f"| {r['mode']} | {r['length']} | {r['peak_mib']:.0f} | {r['prefill_tokens_per_s']:.0f} | "
        f"{r['decode_tokens_per_s']:.1f} |"
        for r in results
    ]
    return [
        f"### Memory and speed (chunk {cfg.chunk}, {cfg.threads} thread(s), {cfg.device})",
        "| mode | length | peak MiB | prefill tokens/s | decode tokens/s |",
        "|---|---|---|---|---|",
        *rows,
    ]


TASK_FUNCTIONS = {
    "nll": task_nll,
    "niah": task_niah,
    "multi_needle": task_multi_needle,
    "mrcr": task_mrcr,
    "memory": task_memory,
}
FIGURES = ("niah.png", "nll_prose.png", "nll_code.png", "memory.png")


def run(cfg: DictConfig) -> str:
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if cfg.run is not None:
        run_dir = Path(cfg.run)
        lm, tokenizer, train_cfg = load_run(run_dir, device)
        data = train_cfg.data
        out = Path(cfg.output) if cfg.output else run_dir / "eval"
    else:
        lm, tokenizer = harness.load_hf(cfg.hf_path, device)
        data = cfg.data
        out = Path(cfg.output) if cfg.output else Path(cfg.hf_path) / "eval"
    tasks = list(TASKS) if cfg.task == "all" else [cfg.task]
    lm.trained_context = lm.max_context
    for task in tasks:  # every length check before the long work
        if task == "niah":
            _check_lengths(cfg, lm, list(cfg.lengths), "lengths")
        if task in ("multi_needle", "mrcr"):
            _check_lengths(cfg, lm, list(cfg[task].lengths), f"{task}.lengths")
        if task == "nll":
            _check_lengths(cfg, lm, [cfg.nll.length], "nll.length")
    if cfg.allow_beyond_context:
        lm.max_context = None  # the harness then accepts any length
    out.mkdir(parents=True, exist_ok=True)
    docs = _corpus(data)[cfg.split]
    lines = []
    for task in tasks:
        lines += TASK_FUNCTIONS[task](cfg, lm, tokenizer, docs, out) + [""]
    report = "\n".join(lines)
    (out / "results.md").write_text(report)
    print(report)
    if cfg.figures:
        copy_figures([out / name for name in FIGURES if (out / name).exists()], cfg.figures)
    print(f"results and plots in {out}")
    return report


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
