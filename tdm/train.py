"""Train one model on tdm.collect data (Schubert et al. 2023, §3–§5): a TDM (transformer dynamics),
the generalist policy (same transformer, behaviour cloning on the expert episodes), or an MLP /
PETS-ensemble dynamics baseline. The validation split chooses the checkpoint (`best.pt`); the
test split is left to tdm.eval.

    python -m tdm.train model=tdm dataset=runs/tdm/data/<dir> experiment=small
    # few-shot: fine-tune a generalist on k episodes of one body
    python -m tdm.train model=tdm dataset=... tasks=[cartpole_family-3] shots=2 init=<run>
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.config import check_choice, check_number, fail
from common.device import resolve_device
from common.logging import WANDB_MODES, open_run
from common.schedules import warmup_cosine
from common.seeding import seed_everything
from tdm.data import TaskData, load_manifest, load_task, sample_windows
from tdm.model import MLPDynamics, TrajectoryTransformer, TransformerConfig
from tdm.tokenizer import Tokenizer

KINDS = ("transformer", "mlp")


def validate(cfg: DictConfig) -> None:
    """Reject bad values (types and ranges) before any work starts, naming the field."""
    m = cfg.model
    check_choice(m, "kind", "model.", KINDS)
    check_number(m, "lr", "model.")
    check_number(m, "weight_decay", "model.", low=0.0, inclusive=True)
    if m.kind == "transformer":
        check_choice(m, "role", "model.", ("dynamics", "policy"))
        for key in ("dim", "layers", "heads", "mlp_ratio", "context", "window"):
            check_number(m, key, "model.", integer=True)
        check_number(m, "bins", "model.", integer=True, low=2, inclusive=True)
        check_number(m, "dropout", "model.", low=0.0, high=1.0, inclusive=True)
        if m.dim % m.heads:
            fail("model.heads", m.heads, f"a divisor of model.dim={m.dim}")
        if m.context >= m.window:
            fail("model.context", m.context, f"< model.window={m.window}")
    else:
        for key in ("hidden", "layers", "members"):
            check_number(m, key, "model.", integer=True)
    check_number(m, "batch_size", "model.", integer=True)
    t = cfg.trainer
    for key in ("steps", "eval_every", "eval_batches", "checkpoint_every", "keep_last"):
        check_number(t, key, "trainer.", integer=True)
    check_number(t, "warmup_steps", "trainer.", integer=True, low=0, inclusive=True)
    check_number(t, "grad_clip", "trainer.")
    check_number(cfg, "threads", integer=True)
    if cfg.shots is not None:
        check_number(cfg, "shots", integer=True)
    if cfg.dataset is None:
        fail("dataset", None, "a directory written by tdm.collect")
    check_choice(cfg.logging, "wandb_mode", "logging.", WANDB_MODES)


def train_tasks(cfg: DictConfig) -> list[str]:
    """`tasks`, or every task of the dataset except its held-out bodies."""
    manifest = load_manifest(cfg.dataset)
    if cfg.tasks is None:
        return [t for t in manifest["tasks"] if t not in manifest["heldout"]]
    unknown = [t for t in cfg.tasks if t not in manifest["tasks"]]
    if unknown:
        fail("tasks", list(cfg.tasks), f"tasks of {cfg.dataset}: {sorted(manifest['tasks'])}")
    return list(cfg.tasks)


def load_splits(cfg: DictConfig, tasks: list[str]) -> tuple[list[TaskData], list[TaskData]]:
    """(train, val) episodes of every task, each task's dataset read once; a policy clones the
    expert episodes only (§5.3)."""
    manifest = load_manifest(cfg.dataset)
    out = {"train": [], "val": []}
    for task in tasks:
        data = load_task(cfg.dataset, task)
        if cfg.model.kind == "transformer" and cfg.model.role == "policy":
            experts = {
                i
                for i, e in enumerate(manifest["tasks"][task]["episodes"])
                if e["policy"] == "expert" and e["noise"] <= cfg.model.max_noise
            }
            data.split = {k: [i for i in v if i in experts] for k, v in data.split.items()}
        out["train"].append(data.episodes("train", cfg.shots))
        out["val"].append(data.episodes("val"))
    for split, parts in out.items():  # a task may lack some (e.g. the policy's experts)
        if sum(d.num_episodes for d in parts) == 0:
            fail("dataset", str(cfg.dataset), f"no {split} episodes of {tasks} for this model")
    return out["train"], out["val"]


def build_model(model_cfg: DictConfig, train: list[TaskData]) -> torch.nn.Module:
    """A model with its standardisation statistics fit on the training episodes."""
    obs = torch.cat([t.obs for t in train])
    actions = torch.cat([t.actions for t in train])
    rewards = torch.cat([t.rewards for t in train])
    m = model_cfg
    if m.kind == "mlp":
        stats = MLPDynamics.fit_stats(obs, actions, rewards)
        return MLPDynamics(
            obs.shape[-1], actions.shape[-1], m.hidden, m.layers, m.members, m.probabilistic, stats
        )
    tokenizer = Tokenizer.fit(m.bins, obs[:, :-1], actions, rewards)
    cfg = TransformerConfig(
        dim=m.dim,
        layers=m.layers,
        heads=m.heads,
        mlp_ratio=m.mlp_ratio,
        dropout=m.dropout,
        max_timesteps=m.window + 1,
    )
    return TrajectoryTransformer(cfg, tokenizer, m.role)


def batch_loss(model, model_cfg, tasks: list[TaskData], batch: int, gen) -> torch.Tensor:
    device = next(model.parameters()).device
    if model_cfg.kind == "mlp":
        obs, act, nxt, rew = transitions(tasks, (model_cfg.members, batch), gen)
        return model.loss(obs.to(device), act.to(device), nxt.to(device), rew.to(device))
    obs, act, rew = sample_windows(tasks, batch, model_cfg.window + 1, gen)
    tokens = model.tokenizer.encode_steps(obs[:, :-1], act[:, :-1], rew[:, :-1])
    # the next row's observation closes the window: its tokens are the last targets
    tokens = torch.cat([tokens, model.tokenizer.encode(obs[:, -1], "obs")], 1)
    return model.loss(tokens.to(device))


def transitions(tasks: list[TaskData], shape: tuple[int, ...], gen) -> tuple[torch.Tensor, ...]:
    """Transitions (o_t, a_t, o_{t+1}, r_t) drawn uniformly over all steps, batch `shape`:
    windows of 2 observations."""
    obs, act, rew = sample_windows(tasks, int(torch.tensor(shape).prod()), 2, gen)
    return (
        obs[:, 0].view(*shape, -1),
        act[:, 0].view(*shape, -1),
        obs[:, 1].view(*shape, -1),
        rew[:, 0].view(shape),
    )


def configure_optimizer(model: torch.nn.Module, lr: float, weight_decay: float):
    """AdamW with weight decay on matrices only (nanoGPT)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


@torch.no_grad()
def validation_loss(model, model_cfg, val: list[TaskData], batches: int, seed: int) -> float:
    """Mean loss on a fixed set of validation batches (the same every evaluation)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = [float(batch_loss(model, model_cfg, val, 64, gen)) for _ in range(batches)]
    model.train()
    return sum(losses) / len(losses)


def run_identity(cfg: DictConfig) -> dict:
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "seed": cfg.seed,
        "dataset": str(cfg.dataset),
        "tasks": cfg.tasks,
        "shots": cfg.shots,
        "init": cfg.init,
    }


def save_model(path: Path, model, cfg: DictConfig, tasks: list[str], val_loss: float) -> None:
    """What tdm.eval loads: weights, the model config and its tokeniser / statistics."""
    if isinstance(model, MLPDynamics):
        extra = {"obs_dim": model.obs_dim, "act_dim": model.act_dim}
    else:
        extra = {"tokenizer": model.tokenizer.state_dict()}
    torch.save(
        {
            "model": model.state_dict(),
            "model_cfg": OmegaConf.to_container(cfg.model),
            "tasks": tasks,
            "val_loss": val_loss,
            **extra,
        },
        path,
    )


def load_model(path: str | Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """A model saved by `save_model` (e.g. `<run>/best.pt`), and its payload."""
    payload = torch.load(path, map_location=device, weights_only=True)
    m = payload["model_cfg"]
    if m["kind"] == "mlp":
        stats = {k: payload["model"][k] for k in ("in_mean", "in_std", "out_mean", "out_std")}
        model = MLPDynamics(
            payload["obs_dim"],
            payload["act_dim"],
            m["hidden"],
            m["layers"],
            m["members"],
            m["probabilistic"],
            stats,
        )
    else:
        tcfg = TransformerConfig(
            dim=m["dim"],
            layers=m["layers"],
            heads=m["heads"],
            mlp_ratio=m["mlp_ratio"],
            dropout=m["dropout"],
            max_timesteps=m["window"] + 1,
        )
        model = TrajectoryTransformer(
            tcfg, Tokenizer.from_state_dict(payload["tokenizer"]), m["role"]
        )
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), payload


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    validate(cfg)
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    tasks = train_tasks(cfg)
    train, val = load_splits(cfg, tasks)
    if cfg.init is not None:  # few-shot: start from a generalist, keep its tokeniser
        model, payload = load_model(Path(cfg.init) / "best.pt", device)
        if payload["model_cfg"]["kind"] != cfg.model.kind:
            fail("init", cfg.init, f"a run of the same model kind ({cfg.model.kind})")
        model.train()
    else:
        model = build_model(cfg.model, train).to(device)
    t = cfg.trainer
    optimizer = configure_optimizer(model, cfg.model.lr, cfg.model.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, best = 0, float("inf")
    checkpoint = latest_checkpoint(run_dir) if t.resume else None
    if checkpoint is not None:
        written_by = torch.load(checkpoint, weights_only=True)["extra"]["identity"]
        if written_by != run_identity(cfg):
            raise ValueError(
                f"{checkpoint} was written by a run with {written_by}, not "
                f"{run_identity(cfg)}; use a new run directory or trainer.resume=false"
            )
        start, extra = load_checkpoint(
            checkpoint,
            models={"model": model},
            optimizers={"model": optimizer},
            schedulers={"model": scheduler},
        )
        gen.set_state(extra["generator"])
        best = extra["best"]
    logger = open_run(run_dir, cfg, project="tdm", step=start, resumed_from=checkpoint)
    metrics: dict[str, float] = {}
    clock = time.perf_counter()
    bar = tqdm(
        range(start, t.steps),
        initial=start,
        total=t.steps,
        desc=cfg.model.name,
        disable=not cfg.logging.progress,
    )
    for step in bar:
        loss = batch_loss(model, cfg.model, train, cfg.model.batch_size, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        if done % t.eval_every == 0 or done == t.steps:
            elapsed = time.perf_counter() - clock
            metrics = {
                "loss": loss.item(),
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "val_loss": validation_loss(model, cfg.model, val, t.eval_batches, cfg.seed),
                "steps_per_s": t.eval_every / max(elapsed, 1e-9),
            }
            if metrics["val_loss"] < best:  # the validation split chooses the checkpoint
                best = metrics["val_loss"]
                save_model(run_dir / "best.pt", model, cfg, tasks, best)
            metrics["best_val_loss"] = best
            logger.log(done, metrics)
            bar.set_postfix(loss=metrics["loss"], val=metrics["val_loss"])
            clock = time.perf_counter()
        if done % t.checkpoint_every == 0 or done == t.steps:
            save_checkpoint(
                run_dir,
                done,
                models={"model": model},
                optimizers={"model": optimizer},
                schedulers={"model": scheduler},
                extra={"identity": run_identity(cfg), "generator": gen.get_state(), "best": best},
                keep_last=t.keep_last,
            )
    logger.close()
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    print(f"[tdm] {run_dir}: best val loss {metrics.get('best_val_loss', float('nan')):.4f}")


if __name__ == "__main__":
    main()
