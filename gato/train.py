"""Train one Gato on the whole gato.collect mixture (Reed et al. 2022, §2.3, §3, App. C):
agent episodes of every task (with demonstration prompts), text and captions, one set of
weights. Validation loss per source chooses the checkpoint (`best.pt`); gato.eval acts on fresh
seeds and scores text and captions on their test splits.

    python -m gato.train dataset=runs/gato/data/<dir> experiment=small
    torchrun --nproc-per-node 2 -m gato.train dataset=... trainer.parallel=fsdp   # FSDP2
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm

from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.config import check_choice, check_number, fail
from common.device import matmul_flops_per_s, resolve_device
from common.distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from common.fsdp import PARALLEL, parallelize
from common.logging import WANDB_MODES, open_run
from common.schedules import warmup_cosine
from common.seeding import seed_everything
from common.sharded_checkpoint import (
    latest_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from gato.captions import SIZE, caption_set
from gato.data import (
    CaptionSource,
    EpisodeSource,
    Mixture,
    TextSource,
    load_manifest,
    read_dataset,
    text_stream,
    tokenize_episode,
)
from gato.model import BIN_INITS, Gato, GatoConfig
from gato.tasks import get_task
from gato.tokenizer import PATCH, TextTokenizer, offline_text

DOMAINS = ("control", "babyai", "atari", "text", "captions")


def validate(cfg: DictConfig) -> None:
    """Reject bad values (types and ranges) before any work starts, naming the field."""
    m = cfg.model
    for key in ("dim", "layers", "heads", "mlp_dim", "context", "patch_channels"):
        check_number(m, key, "model.", integer=True)
    check_number(m, "dropout", "model.", low=0.0, high=1.0, inclusive=True)
    if m.dim % m.heads or m.dim // m.heads not in (32, 64, 128):
        fail("model.heads", m.heads, f"a divisor of model.dim={m.dim} giving head dim 32/64/128")
    if m.patch_channels % min(32, m.patch_channels):
        fail("model.patch_channels", m.patch_channels, "a multiple of 32, or at most 32")
    check_choice(m, "bin_init", "model.", BIN_INITS)
    t = cfg.trainer
    for key in (
        "steps",
        "batch_size",
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "keep_last",
    ):
        check_number(t, key, "trainer.", integer=True)
    check_number(t, "warmup_steps", "trainer.", integer=True, low=0, inclusive=True)
    for key in ("lr", "grad_clip"):
        check_number(t, key, "trainer.")
    check_number(t, "weight_decay", "trainer.", low=0.0, inclusive=True)
    if t.peak_flops is not None:
        check_number(t, "peak_flops", "trainer.")
    check_choice(t, "parallel", "trainer.", PARALLEL)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if t.batch_size % world:
        fail("trainer.batch_size", t.batch_size, f"a multiple of the {world} ranks (global batch)")
    for key in DOMAINS:
        check_number(cfg.mixture, key, "mixture.", low=0.0, inclusive=True)
    check_number(cfg, "prompt_prob", low=0.0, high=1.0, inclusive=True)
    check_number(cfg, "prompt_fraction", low=0.0, high=1.0, inclusive=True)
    check_number(cfg, "threads", integer=True)
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)
    if cfg.dataset is None:
        fail("dataset", None, "a directory written by gato.collect")
    load_manifest(cfg.dataset)


def model_config(model_cfg, vocab_size: int) -> GatoConfig:
    m = OmegaConf.to_container(model_cfg) if isinstance(model_cfg, DictConfig) else model_cfg
    return GatoConfig(text_size=vocab_size, **{k: v for k, v in m.items() if k != "name"})


def caption_ids(text: TextTokenizer, captions: list[str]) -> list[torch.Tensor]:
    """Each caption's ids, closed by the end-of-text token (so decoding knows where to stop)."""
    return [torch.tensor(text.encode(c) + [text.eot_id]) for c in captions]


def build_sources(cfg: DictConfig, text: TextTokenizer) -> tuple[dict, dict, dict]:
    """The mixture's train and val sources and their weights: one per task (the domain's weight
    split evenly over its tasks), text and captions. Each task's dataset, the manifest and the
    text are read once for both splits."""
    manifest = load_manifest(cfg.dataset)
    vocab = GatoConfig(text_size=text.vocab_size).vocab
    splits = ("train", "val")
    sources: dict[str, dict] = {split: {} for split in splits}
    weights = {}
    per_domain: dict[str, int] = {}
    for meta in manifest["tasks"].values():
        per_domain[meta["domain"]] = per_domain.get(meta["domain"], 0) + 1
    for name, meta in manifest["tasks"].items():
        task = get_task(name)
        episodes = read_dataset(Path(cfg.dataset) / "minari", task)
        for split in splits:
            tokens = [
                tokenize_episode(task, episodes[i], vocab, text) for i in meta["split"][split]
            ]
            sources[split][name] = EpisodeSource(task, tokens, cfg.prompt_prob, cfg.prompt_fraction)
        weights[name] = cfg.mixture[meta["domain"]] / per_domain[meta["domain"]]
    docs = offline_text(manifest["text"]["chars"])
    for split in splits:
        stream = text_stream(text, [docs[i] for i in manifest["text"]["split"][split]])
        sources[split]["text"] = TextSource(stream)
        caps = manifest["captions"][split]
        frames, captions = caption_set(caps["n"], caps["seed"])
        sources[split]["captions"] = CaptionSource(
            torch.as_tensor(frames), caption_ids(text, captions), (SIZE // PATCH) ** 2
        )
    weights["text"] = cfg.mixture.text
    weights["captions"] = cfg.mixture.captions
    return sources["train"], sources["val"], weights


def configure_optimizer(model: torch.nn.Module, t: DictConfig) -> torch.optim.Optimizer:
    """AdamW (App. C.1: β = (0.9, 0.95), weight decay 0.1) with decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))


@torch.no_grad()
def validation_losses(net: Gato, batches: dict[str, list], device) -> dict[str, float]:
    """Mean masked loss per source on fixed validation batches."""
    net.eval()
    out = {
        name: float(np.mean([float(net.loss(b.to(device))) for b in bs]))
        for name, bs in batches.items()
    }
    net.train()
    return out


def run_identity(cfg: DictConfig) -> dict:
    keys = ("model", "mixture", "seed", "dataset", "prompt_prob", "prompt_fraction")
    return {k: OmegaConf.to_container(cfg, resolve=True)[k] for k in keys} | {
        "trainer": {k: cfg.trainer[k] for k in ("steps", "batch_size", "lr", "parallel")}
    }


def save_model(
    path: Path, net: Gato, cfg: DictConfig, val: dict[str, float], fsdp: bool, main: bool
) -> None:
    """What gato.eval loads: weights (gathered from the shards under FSDP, a collective), the
    model config and the dataset it was trained on; rank 0 writes."""
    if fsdp:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(net, options=options)
    else:
        state = net.state_dict()
    if main:
        payload = {"model": state, "config": net.config_dict(), "dataset": str(cfg.dataset)}
        torch.save(payload | {"val_losses": val}, path)


def load_model(path: str | Path, device="cpu") -> tuple[Gato, dict]:
    payload = torch.load(path, map_location=device, weights_only=True)
    net = Gato(GatoConfig(**payload["config"]))
    net.load_state_dict(payload["model"])
    return net.to(device).eval(), payload


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    if info.enabled:
        shared = [str(run_dir)]  # Hydra's ${now} may differ between ranks: use rank 0's
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    try:
        return _train(cfg, run_dir, device, info)
    finally:
        cleanup()


def _train(cfg: DictConfig, run_dir: Path, device, info: DistInfo) -> dict[str, float]:
    seed_everything(cfg.seed)
    text = TextTokenizer.load(Path(cfg.dataset) / "text_tokenizer.json")
    train_sources, val_sources, weights = build_sources(cfg, text)
    t = cfg.trainer
    context = cfg.model.context
    val_batches = {}
    for name, source in val_sources.items():
        mix = Mixture({name: source}, {name: 1.0}, context, seed=cfg.seed + 7)
        val_batches[name] = [mix.sample(t.batch_size) for _ in range(t.eval_batches)]
    # every rank draws the same global batch and trains on its share of the rows
    mixture = Mixture(train_sources, weights, context, seed=cfg.seed)
    net = Gato(model_config(cfg.model, text.vocab_size)).to(device)
    fsdp = info.enabled and t.parallel == "fsdp"
    model = parallelize(net, net.blocks, t.parallel, info, device=device)
    optimizer = configure_optimizer(net, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.steps))
    identity = run_identity(cfg)
    latest, load, save = (
        (latest_sharded_checkpoint, load_sharded_checkpoint, save_sharded_checkpoint)
        if fsdp
        else (latest_checkpoint, partial(load_checkpoint, map_location=device), save_checkpoint)
    )
    start, best, resumed_from = 0, float("inf"), None
    ckpt = latest(run_dir) if t.resume else None
    if ckpt is not None:
        mismatch = ValueError(
            f"{ckpt} was written by a run with another configuration than "
            f"{identity}; use a new run directory or trainer.resume=false"
        )
        if not fsdp and torch.load(ckpt, weights_only=True)["extra"]["identity"] != identity:
            raise mismatch
        try:
            start, extra = load(
                ckpt,
                models={"model": net},
                optimizers={"model": optimizer},
                schedulers={"model": scheduler},
            )
        except RuntimeError as e:  # a sharded checkpoint of other shapes
            raise mismatch from e
        if extra["identity"] != identity:
            raise mismatch
        mixture.rng.bit_generator.state = extra["mixture_rng"]
        best, resumed_from = extra["best"], ckpt
    logger = open_run(
        run_dir, cfg, project="gato", step=start, resumed_from=resumed_from, enabled=info.is_main
    )
    tokens_per_step = t.batch_size * context
    # the MFU reference: the chip's peak when given (GPU datasheet), else a measured matmul rate
    peak = t.peak_flops or matmul_flops_per_s(device)
    if resumed_from is None:
        logger.log(
            0,
            {
                "params": net.num_parameters(),
                "tokens_per_step": tokens_per_step,
                "peak_flops": peak,
            },
        )
    metrics: dict[str, float] = {}
    clock, image_tokens, seen = time.perf_counter(), 0, 0
    bar = tqdm(
        range(start, t.steps),
        initial=start,
        total=t.steps,
        desc=f"gato {cfg.model.name}",
        disable=not (cfg.logging.progress and info.is_main),
    )
    for step in bar:
        batch = mixture.sample(t.batch_size)
        targets = int(batch.loss_mask[:, 1:].sum())
        share = t.batch_size // info.world_size
        batch = batch.rows(info.rank * share, (info.rank + 1) * share).to(device)
        loss = _loss(model, batch, targets, info.world_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        image_tokens += int(batch.is_image.sum())
        seen += batch.ids.numel()
        done = step + 1
        if done % t.eval_every == 0 or done == t.steps:
            elapsed = time.perf_counter() - clock
            val = validation_losses(net, val_batches, device)
            total = sum(weights[k] * v for k, v in val.items()) / sum(weights.values())
            tokens_per_s = seen * info.world_size / max(elapsed, 1e-9)
            flops = net.flops_per_token(image_tokens / max(seen, 1)) * tokens_per_s
            metrics = {
                "loss": float(all_reduce_mean(loss.detach())),
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "val_loss": total,
                **{f"val/{k}": v for k, v in val.items()},
                "tokens_per_s": tokens_per_s,
                "model_flops_per_s": flops,
                "mfu": flops / (peak * info.world_size),
            }
            if total < best:  # the validation split chooses the checkpoint
                best = total
                save_model(run_dir / "best.pt", net, cfg, val, fsdp, info.is_main)
            metrics["best_val_loss"] = best = min(best, total)
            logger.log(done, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", val=f"{total:.3f}")
            clock, image_tokens, seen = time.perf_counter(), 0, 0
        if done % t.checkpoint_every == 0 or done == t.steps:
            save(
                run_dir,
                done,
                models={"model": net},
                optimizers={"model": optimizer},
                schedulers={"model": scheduler},
                extra={
                    "identity": identity,
                    "best": best,
                    "mixture_rng": mixture.rng.bit_generator.state,
                },
                keep_last=t.keep_last,
            )
    logger.close()
    return metrics


def _loss(model: torch.nn.Module, batch, targets: int, world: int) -> torch.Tensor:
    """This rank's part of the global batch's masked mean loss (eq. 2), scaled by the world
    size because DDP / FSDP average gradients over ranks: the ranks' mean is the loss of the
    whole batch, exactly. Through the (possibly wrapped) model, so its hooks run."""
    logits = model(batch.ids, batch.local_positions, batch.is_image, batch.patches)[:, :-1]
    mask = batch.loss_mask[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[mask].float(), batch.ids[:, 1:][mask], reduction="sum"
    )
    return ce * world / max(targets, 1)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    print(f"[gato] {run_dir}: best val loss {metrics.get('best_val_loss', float('nan')):.4f}")


if __name__ == "__main__":
    main()
