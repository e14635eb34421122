"""Train the long-context MoE LM (our recipe for Gemini 1.5's "sparse MoE transformer").

    python -m gemini_longctx.train experiment=small              # MoE, 256 → 1K → 2K context
    python -m gemini_longctx.train experiment=small model.ffn=dense   # equal-active dense baseline
    torchrun --nproc_per_node=2 -m gemini_longctx.train experiment=smoke \
        trainer.context_parallel=true                               # ring attention over 2 ranks

Context length grows in stages (`stages`: seq_len and steps each) at a constant number of
tokens per step; the training mixture is prose, code and a synthetic key-value retrieval task
(gemini_longctx.data). With `trainer.context_parallel` every rank takes the same batch and its
contiguous chunk of each sequence, and attention is ring attention over the ranks. Results
table: gemini_longctx/README.md.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.distributed import DistInfo, cleanup, init_distributed
from common.fsdp import PARALLEL, apply_activation_checkpointing, parallelize
from common.logging import WANDB_MODES, open_run
from common.schedules import warmup_cosine
from common.seeding import seed_everything
from common.sharded_checkpoint import (
    latest_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from gemini_longctx.data import (
    SPLITS,
    BPETokenizer,
    Mixture,
    copy_sample,
    load_corpus,
    retrieval_sample,
    split_documents,
    token_stream,
)
from gemini_longctx.model import FFN_KINDS, LongContextLM, ModelConfig

TOKENIZER_FILE = "tokenizer.json"


def validate(cfg: DictConfig) -> None:
    """Reject bad values (types and ranges) before any work starts, naming the field."""
    m = cfg.model
    for key in ("dim", "layers", "heads", "kv_heads", "num_experts", "top_k", "expert_hidden"):
        check_number(m, key, "model.", integer=True)
    for key in ("moe_every", "max_context"):
        check_number(m, key, "model.", integer=True)
    check_number(m, "rope_base", "model.", low=1.0)
    for key in ("aux_loss_coef", "z_loss_coef"):
        check_number(m, key, "model.", inclusive=True)
    check_choice(m, "ffn", "model.", FFN_KINDS)
    if m.dim % m.heads or m.dim // m.heads not in (32, 64, 128):
        fail("model.heads", m.heads, "dim / heads in {32, 64, 128} (attention kernel)")
    if m.heads % m.kv_heads:
        fail("model.kv_heads", m.kv_heads, f"a divisor of model.heads={m.heads}")
    if m.top_k > m.num_experts:
        fail("model.top_k", m.top_k, f"<= model.num_experts={m.num_experts}")
    if m.capacity_factor is not None:
        check_number(m, "capacity_factor", "model.")
    check_number(cfg.data, "vocab_size", "data.", integer=True, low=256)
    check_number(cfg.data, "code_bytes", "data.", integer=True, inclusive=True)
    check_number(cfg.data, "code_weight", "data.", high=1.0, inclusive=True)
    check_mixture_keys(cfg.data, "data.", cfg.data.vocab_size)
    if not cfg.data.prose:
        fail("data.prose", list(cfg.data.prose), "at least one of essays, pydoc")
    for key in ("tokens_per_step", "warmup", "log_every", "eval_every", "eval_batches"):
        check_number(cfg.trainer, key, "trainer.", integer=True)
    for key in ("checkpoint_every", "keep_last", "threads"):
        check_number(cfg.trainer, key, "trainer.", integer=True)
    for key in ("lr", "max_grad_norm"):
        check_number(cfg.trainer, key, "trainer.")
    check_number(cfg.trainer, "weight_decay", "trainer.", inclusive=True)
    check_choice(cfg.trainer, "parallel", "trainer.", PARALLEL)
    if cfg.trainer.peak_flops is not None:
        check_number(cfg.trainer, "peak_flops", "trainer.")
    if not cfg.stages:
        fail("stages", cfg.stages, "a non-empty list of {seq_len, steps}")
    for i, stage in enumerate(cfg.stages):
        check_number(stage, "seq_len", f"stages[{i}].", integer=True)
        check_number(stage, "steps", f"stages[{i}].", integer=True)
        if cfg.trainer.tokens_per_step % stage.seq_len:
            fail(f"stages[{i}].seq_len", stage.seq_len, "a divisor of trainer.tokens_per_step")
        unknown = set(stage) - set(STAGE_KEYS)
        if unknown:
            fail(f"stages[{i}]", sorted(unknown)[0], f"a key among {STAGE_KEYS}")
        check_mixture_keys(stage, f"stages[{i}].", cfg.data.vocab_size)
        mix = stage_mixture(cfg, stage)
        if mix["copy_fraction"] + mix["retrieval_fraction"] > 1:
            fail(f"stages[{i}]", mix, "copy_fraction + retrieval_fraction <= 1")
        if "copy_softmax" in stage:
            check_choice(stage, "copy_softmax", f"stages[{i}].", COPY_SOFTMAX)
            if stage.copy_softmax == "copy_ids" and (
                mix["copy_fraction"] != 1 or mix["copy_vocab"] is None
            ):
                fail(
                    f"stages[{i}].copy_softmax",
                    stage.copy_softmax,
                    "copy_ids only in a copy-only stage (copy_fraction 1.0) with a copy_vocab",
                )
        if mix["retrieval_fraction"] > 0 and stage.seq_len < 256:
            fail(
                f"stages[{i}].seq_len", stage.seq_len, ">= 256 when the stage has retrieval samples"
            )
    if cfg.stages[-1].seq_len > m.max_context:
        fail("model.max_context", m.max_context, "at least the last stage's seq_len")
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)


MIXTURE_KEYS = ("copy_fraction", "copy_vocab", "retrieval_fraction", "max_facts")
# A stage's copy_softmax: "full" (the default) or "copy_ids": the loss is a softmax over the copy
# ids only (a copy-only warm-up stage, see softmax_vocab)
COPY_SOFTMAX = ("full", "copy_ids")
STAGE_KEYS = ("seq_len", "steps", "copy_softmax", *MIXTURE_KEYS)


def check_mixture_keys(node, prefix: str, vocab_size: int) -> None:
    """The MIXTURE_KEYS that `node` (data, or a stage) sets: fractions in [0, 1], max_facts a
    positive integer, copy_vocab null or an integer in [1, vocab_size]."""
    for key in ("copy_fraction", "retrieval_fraction"):
        if key in node:
            check_number(node, key, prefix, high=1.0, inclusive=True)
    if "max_facts" in node:
        check_number(node, "max_facts", prefix, integer=True)
    if node.get("copy_vocab") is not None:
        check_number(
            node, "copy_vocab", prefix, integer=True, low=1, high=vocab_size, inclusive=True
        )


def softmax_vocab(cfg: DictConfig, stage) -> int | None:
    """The number of ids the stage's loss normalises over: its copy_vocab when copy_softmax is
    "copy_ids", else None (the whole vocabulary). A copy warm-up over a few ids is slow to form
    induction heads when the softmax also spans the thousands of ids it never sees (the model
    must first push them all down); over the copy ids alone copying forms within a few hundred
    steps and then carries over to the whole vocabulary (README, copy warm-up)."""
    if stage.get("copy_softmax", "full") == "copy_ids":
        return stage_mixture(cfg, stage)["copy_vocab"]
    return None


def stage_mixture(cfg: DictConfig, stage) -> dict:
    """The stage's copy fraction, retrieval fraction and facts per retrieval sample: its own
    keys (a retrieval curriculum) or those of `data`."""
    return {key: stage.get(key, cfg.data[key]) for key in MIXTURE_KEYS}


def model_config(cfg: DictConfig, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, **OmegaConf.to_container(cfg.model))


def run_identity(cfg: DictConfig) -> dict:
    """What a checkpoint must match to be resumed."""
    keep = ("model", "data", "stages")
    identity = {k: OmegaConf.to_container(cfg[k]) for k in keep}
    identity.update(seed=cfg.seed, tokens_per_step=cfg.trainer.tokens_per_step)
    return identity


def prepare_data(cfg: DictConfig, run_dir: Path) -> tuple[BPETokenizer, dict[str, dict]]:
    """Documents split by seed, the tokeniser (trained on the train split once, then read back
    from the run directory) and the token streams {split: {kind: int32 ids}}."""
    docs = load_corpus(list(cfg.data.prose), cfg.data.code_bytes, cfg.data.cache_dir)
    splits = split_documents(
        docs, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed
    )
    path = run_dir / TOKENIZER_FILE
    if path.exists():
        tokenizer = BPETokenizer.load(path)
    else:
        tokenizer = BPETokenizer.train([d.text for d in splits["train"]], cfg.data.vocab_size)
        tokenizer.save(path)
    streams = {
        split: {
            kind: token_stream(tokenizer, [d for d in splits[split] if d.kind == kind])
            for kind in sorted({d.kind for d in splits[split]})
        }
        for split in SPLITS
    }
    return tokenizer, streams


def configure_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (nanoGPT's configure_optimizers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.trainer.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.trainer.lr, betas=(0.9, 0.95))


def stage_at(stages: list[dict], step: int) -> int:
    """Index of the stage that update `step` (0-based) belongs to."""
    end = 0
    for i, stage in enumerate(stages):
        end += stage["steps"]
        if step < end:
            return i
    return len(stages) - 1


def lm_loss(
    model: LongContextLM, tokens: torch.Tensor, group=None, vocab: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Next-token cross-entropy of tokens (B, T + 1), plus the MoE auxiliary losses. With a
    process `group` (context parallelism) this rank computes its contiguous chunk of the T
    positions; the mean of the ranks' losses is the full sequence's loss. `vocab`: the softmax
    over ids [0, vocab) only (every target must lie there)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    start = 0
    if group is not None:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        chunk = inputs.shape[1] // world
        start = rank * chunk
        inputs, targets = (t[:, start : start + chunk] for t in (inputs, targets))
    out = model(inputs, start=start, group=group)
    logits = out.logits if vocab is None else out.logits[..., :vocab]
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    return ce, out.aux_loss, out.tokens_per_expert


def average_gradients(model: torch.nn.Module, group) -> None:
    """Mean of the ranks' gradients (each rank's loss covers its chunk of the sequences)."""
    world = dist.get_world_size(group)
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad /= world


@torch.no_grad()
def validation_metrics(
    model: LongContextLM,
    streams: dict[str, np.ndarray],
    tokenizer: BPETokenizer,
    cfg: DictConfig,
    seq_len: int,
    copy_vocab: int | None = None,
) -> dict[str, float]:
    """On fixed draws from the validation split: next-token loss per kind, and the retrieval
    accuracy (every digit of the last answer the argmax, teacher-forced) of `eval_batches`
    retrieval samples over validation prose, and when copy samples are trained the argmax
    accuracy on the second half of `eval_batches` copy samples over the current stage's
    `copy_vocab` ids (chance 1 / copy_vocab)."""
    model.eval()
    rng = np.random.default_rng(cfg.seed)
    device = next(model.parameters()).device
    batches = cfg.trainer.eval_batches
    metrics = {}
    for kind, stream in streams.items():
        if len(stream) <= seq_len + 1:
            continue
        starts = rng.integers(0, len(stream) - seq_len - 1, size=batches)
        windows = np.stack([stream[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        metrics[f"val_loss_{kind}"] = float(lm_loss(model, torch.from_numpy(windows).to(device))[0])
    trains_retrieval = any(stage_mixture(cfg, s)["retrieval_fraction"] > 0 for s in cfg.stages)
    if trains_retrieval and "prose" in streams:
        correct, digits, digits_right = 0, 0, 0
        for _ in range(batches):
            sample, answers = retrieval_sample(
                streams["prose"], tokenizer, seq_len + 1, cfg.data.max_facts, rng
            )
            tokens = torch.from_numpy(sample).to(device)
            predicted = model(tokens[None, :-1]).logits[0].argmax(-1)
            for start, stop in answers:
                right = predicted[start - 1 : stop - 1] == tokens[start:stop]
                digits += stop - start
                digits_right += int(right.sum())
            correct += bool(right.all())  # the last question
        metrics["val_retrieval_acc"] = correct / batches
        metrics["val_retrieval_digit_acc"] = digits_right / digits  # every answer's digits
    if any(stage_mixture(cfg, s)["copy_fraction"] > 0 for s in cfg.stages):
        vocab = copy_vocab or tokenizer.vocab_size
        samples = np.stack([copy_sample(vocab, seq_len + 1, rng) for _ in range(batches)])
        tokens = torch.from_numpy(samples).to(device)
        predicted = model(tokens[:, :-1]).logits.argmax(-1)
        half = seq_len // 2  # every target from here on repeats one period back
        right = predicted[:, half:] == tokens[:, half + 1 :]
        metrics["val_copy_acc"] = float(right.float().mean())
    model.train()
    return metrics


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    validate(cfg)
    torch.set_num_threads(cfg.trainer.threads)
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    group = dist.group.WORLD if info.enabled and cfg.trainer.context_parallel else None
    if info.enabled:
        shared = [str(run_dir)]  # Hydra's ${now} may differ between ranks: use rank 0's
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
        for i, stage in enumerate(cfg.stages):
            split, what = (
                (stage.seq_len, "seq_len")
                if group is not None
                else (cfg.trainer.tokens_per_step // stage.seq_len, "batch")
            )
            if split % info.world_size:
                fail(f"stages[{i}].seq_len", stage.seq_len, f"a {what} divisible by the ranks")
    try:
        return _train(cfg, run_dir, device, info, group)
    finally:
        cleanup()


def _train(cfg: DictConfig, run_dir: Path, device, info: DistInfo, group) -> dict[str, float]:
    seed_everything(cfg.seed)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer, streams = prepare_data(cfg, run_dir)
    if info.enabled:  # rank 0 trains the tokeniser; the others read it
        dist.barrier()
        if not info.is_main:
            tokenizer, streams = prepare_data(cfg, run_dir)
    net = LongContextLM(model_config(cfg, tokenizer.vocab_size)).to(device)
    counts, flops_per_token = net.parameter_counts(), net.flops_per_token
    # data parallel over the ranks (DDP or FSDP2, common.fsdp) unless they split sequences
    fsdp = info.enabled and group is None and cfg.trainer.parallel == "fsdp"
    model = net
    if info.enabled and group is None:
        model = parallelize(
            net,
            net.blocks,
            cfg.trainer.parallel,
            info,
            device=device,
            activation_checkpointing=cfg.trainer.activation_checkpointing,
        )
    elif cfg.trainer.activation_checkpointing:
        apply_activation_checkpointing(net.blocks)
    optimizer = configure_optimizer(net, cfg)
    stages = OmegaConf.to_container(cfg.stages)
    total = sum(s["steps"] for s in stages)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.trainer.warmup, total)
    )
    mixture = Mixture(
        streams["train"],
        tokenizer,
        code_weight=cfg.data.code_weight,
        retrieval_fraction=cfg.data.retrieval_fraction,
        max_facts=cfg.data.max_facts,
        seed=cfg.seed,
    )
    identity = run_identity(cfg)
    step, resumed_from = 0, None
    latest, load = (
        (latest_sharded_checkpoint, load_sharded_checkpoint)
        if fsdp
        else (latest_checkpoint, partial(load_checkpoint, map_location=device))
    )
    ckpt = latest(run_dir) if cfg.trainer.resume else None
    if ckpt is not None:
        step, extra = load(
            ckpt,
            models={"model": net},
            optimizers={"model": optimizer},
            schedulers={"model": scheduler},
        )
        if extra["identity"] != identity:
            raise ValueError(
                f"{ckpt} was written by a different configuration; use a new run directory "
                "or trainer.resume=false"
            )
        mixture.load_state_dict(extra["mixture"])
        resumed_from = ckpt
    logger = open_run(
        run_dir,
        cfg,
        project="gemini_longctx",
        step=step,
        resumed_from=resumed_from,
        enabled=info.is_main,
    )
    if resumed_from is None:
        logger.log(0, {"params_total": counts["total"], "params_active": counts["active"]})

    def checkpoint(at: int) -> None:
        states = dict(
            models={"model": net},
            optimizers={"model": optimizer},
            schedulers={"model": scheduler},
            extra={"identity": identity, "mixture": mixture.state_dict()},
            keep_last=cfg.trainer.keep_last,
        )
        if fsdp:  # every rank writes its shards
            save_sharded_checkpoint(run_dir, at, **states)
        elif info.is_main:
            save_checkpoint(run_dir, at, **states)

    bar = tqdm(total=total, initial=step, disable=not (cfg.logging.progress and info.is_main))
    window = {"loss": 0.0, "aux": 0.0, "n": 0, "tokens": 0, "flops": 0.0, "time": 0.0}
    expert_counts = None
    last = {}
    while step < total:
        stage = stages[stage_at(stages, step)]
        seq_len = stage["seq_len"]
        for key, value in stage_mixture(cfg, stage).items():
            setattr(mixture, key, value)
        tokens = mixture.batch(cfg.trainer.tokens_per_step // seq_len, seq_len)
        if info.enabled and group is None:  # data parallel: this rank's rows of the batch
            tokens = tokens[info.rank :: info.world_size]
        tokens = tokens.to(device)
        t0 = time.perf_counter()
        ce, aux, per_expert = lm_loss(model, tokens, group, softmax_vocab(cfg, stage))
        optimizer.zero_grad(set_to_none=True)
        (ce + aux).backward()
        if group is not None:
            average_gradients(model, group)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        window["time"] += time.perf_counter() - t0
        if info.enabled:  # the mean over ranks (each holds a part of the batch)
            ce = ce.detach().clone()
            dist.all_reduce(ce)
            ce /= info.world_size
        window["loss"] += float(ce.detach())
        window["aux"] += float(aux.detach())
        window["n"] += 1
        rank_tokens = tokens.shape[0] * seq_len // (info.world_size if group is not None else 1)
        window["tokens"] += rank_tokens
        window["flops"] += rank_tokens * flops_per_token(seq_len)
        if per_expert is not None:
            expert_counts = per_expert if expert_counts is None else expert_counts + per_expert
        bar.update(1)
        if step % cfg.trainer.log_every == 0 or step == total:
            tokens_per_s = window["tokens"] / window["time"]
            record = {
                "loss": window["loss"] / window["n"],
                "aux_loss": window["aux"] / window["n"],
                "seq_len": seq_len,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": tokens_per_s * info.world_size,
                "tflops": window["flops"] / window["time"] / 1e12,  # per rank
                "tokens_seen": step * cfg.trainer.tokens_per_step,
            }
            if cfg.trainer.peak_flops is not None:
                record["mfu"] = window["flops"] / window["time"] / cfg.trainer.peak_flops
            if expert_counts is not None:
                share = expert_counts.sum(0).double() / expert_counts.sum()
                record["expert_load_max"] = float(share.max() * share.numel())
                record["expert_share"] = [round(float(s), 4) for s in share]
                expert_counts = None
            if step % cfg.trainer.eval_every == 0 or step == total:
                record.update(
                    validation_metrics(
                        net, streams["val"], tokenizer, cfg, seq_len, mixture.copy_vocab
                    )
                )
            logger.log(step, record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", ctx=seq_len, tok_s=f"{tokens_per_s:.0f}")
            last = record
            window = dict.fromkeys(window, 0)
        if step % cfg.trainer.checkpoint_every == 0 or step == total:
            checkpoint(step)
    bar.close()
    logger.close()
    return {k: v for k, v in last.items() if isinstance(v, float)}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
