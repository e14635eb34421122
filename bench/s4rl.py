"""Speed of the S5 memory against LSTM, GRU and a Transformer (Lu et al. 2023; issue 6):
what a PPO update costs over long sequences, and what one acting step costs deep into a context.

    python -m bench.s4rl [--batch 4] [--width 64] [--max-steps 8192] [--repeats 3] [--threads 1]
                         [--plot PATH]

Training: forward + backward over (B, T) sequences, T = 128 … 8192, of S5 (2 layers, P = 64,
4 blocks, 1% resets; the chunked torch scan on CPU, the Triton scan on CUDA), the LSTM and GRU
cell loops the PPO runs (resets inside the sequence), the fused nn.LSTM / nn.GRU without resets
(their best case: cuDNN on GPU, the native kernel on CPU) and a full-context causal Transformer
of the same width (2 blocks, head dim 32, common attention). Memory: the peak allocated on CUDA;
on CPU, the bytes of the tensors autograd saves for backward. Acting: the latency of one step of
B environments at context position t. S5, LSTM and GRU carry a fixed-size state; the Transformer
decodes one token against a KV cache of t past tokens per layer. The log-log slope of training
time vs T over the two largest T is printed (S5 ≈ 1, the Transformer → 2). Timings are reported,
never asserted.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench.timing import best_seconds
from common.device import peak_memory_bytes, reset_peak_memory, resolve_device
from common.kernels.attention import KVCache, decode_attention
from s4rl.model import RNN, S5, TransformerBlock

STEPS = (128, 512, 2048, 8192)
HEAD_DIM = 32
RESET_RATE = 0.01


class CausalBlock(TransformerBlock):
    """s4rl's TransformerBlock (full causal context through common attention) with one-token
    decoding against a KV cache, for the acting-latency table."""

    def decode(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The output for one new token x (B, W); its key and value are appended to `cache`."""
        n, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, 3, self.heads, 1, -1).unbind(1)
        cache.append(k, v)
        x = x + self.proj(decode_attention(q, cache).reshape(n, width))
        return x + self.mlp(self.norm2(x))


@dataclass
class Timing:
    model: str
    length: int  # T (training) or context position t (acting)
    seconds: float | None = None  # None: skipped
    memory: int | None = None  # bytes, training only


def build_models(width: int, device: torch.device) -> dict[str, nn.Module]:
    scan = "auto" if device.type == "cuda" else "chunked"
    models = {
        "S5": S5(width, 2, state_size=64, blocks=4, scan=scan),
        "LSTM cells, resets": RNN(width, 2, "lstm"),
        "GRU cells, resets": RNN(width, 2, "gru"),
        "nn.LSTM fused, no resets": nn.LSTM(width, width, 2, batch_first=True),
        "nn.GRU fused, no resets": nn.GRU(width, width, 2, batch_first=True),
        "Transformer, full context": nn.ModuleList(
            CausalBlock(width, width // HEAD_DIM) for _ in range(2)
        ),
    }
    return {name: model.to(device) for name, model in models.items()}


def sequence_output(model: nn.Module, x: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    """(B, T, W) outputs over the whole sequence."""
    if isinstance(model, S5 | RNN):
        return model(x, reset, model.initial_state(len(x)))[0]
    if isinstance(model, nn.RNNBase):
        return model(x)[0]
    for block in model:
        x = block(x)
    return x


def forward_backward(model: nn.Module, x: torch.Tensor, reset: torch.Tensor) -> None:
    sequence_output(model, x, reset).square().mean().backward()


def saved_or_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Peak allocated CUDA memory of `run`, or on CPU the bytes of the distinct storages that
    autograd saves for backward during it."""
    if device.type == "cuda":
        reset_peak_memory(device)
        run()
        return peak_memory_bytes(device)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def training_timings(
    models: dict[str, nn.Module],
    batch: int,
    width: int,
    steps: Sequence[int],
    repeats: int,
    device: torch.device,
    max_attention_bytes: float = math.inf,
) -> list[Timing]:
    """Best forward + backward seconds and memory of each model at each T. The Transformer is
    skipped where one layer's attention matrix, B·H·T²·4 bytes, would exceed the limit (a
    dense fallback would hold it)."""
    timings = []
    for length in steps:
        x = torch.randn(batch, length, width, device=device)
        reset = torch.rand(batch, length, device=device) < RESET_RATE
        for name, model in models.items():
            heads = model[0].heads if isinstance(model, nn.ModuleList) else 0
            if batch * heads * length**2 * 4 > max_attention_bytes:
                timings.append(Timing(name, length))
                continue
            run = functools.partial(forward_backward, model, x, reset)
            (seconds,) = best_seconds([run], device, repeats)
            timings.append(Timing(name, length, seconds, saved_or_peak_bytes(run, device)))
    return timings


def step_function(
    model: nn.Module, batch: int, width: int, position: int, device: torch.device
) -> Callable[[], torch.Tensor]:
    """One acting step of `batch` environments at context position `position`."""
    x = torch.randn(batch, width, device=device)
    if isinstance(model, S5 | RNN):
        state = model.initial_state(batch)
        reset = torch.zeros(batch, dtype=torch.bool, device=device)
        return lambda: model.step(x, reset, state)[0]
    caches = []
    for block in model:
        cache = KVCache.allocate(batch, block.heads, position + 1, HEAD_DIM, device=device)
        past = (batch, block.heads, position, HEAD_DIM)
        cache.append(torch.randn(past, device=device), torch.randn(past, device=device))
        caches.append(cache)

    def decode() -> torch.Tensor:
        h = x
        for block, cache in zip(model, caches, strict=True):
            cache.length = position  # drop the token of the previous call
            h = block.decode(h, cache)
        return h

    return decode


def acting_timings(
    models: dict[str, nn.Module],
    batch: int,
    width: int,
    positions: Sequence[int],
    repeats: int,
    device: torch.device,
) -> list[Timing]:
    """Best seconds of one acting step (no grad) of S5, the LSTM and GRU cells and the
    Transformer with a KV cache, at each context position."""
    names = [name for name, model in models.items() if not isinstance(model, nn.RNNBase)]
    timings = []
    with torch.no_grad():
        for position in positions:
            steps = [step_function(models[n], batch, width, position, device) for n in names]
            seconds = best_seconds(steps, device, repeats)
            timings += [Timing(n, position, s) for n, s in zip(names, seconds, strict=True)]
    return timings


def slope(timings: list[Timing], model: str, points: int = 2) -> float:
    """Log-log slope of seconds vs length over the `points` largest lengths timed."""
    rows = [t for t in timings if t.model == model and t.seconds is not None][-points:]
    if len(rows) < 2:
        return math.nan
    return math.log(rows[-1].seconds / rows[0].seconds) / math.log(rows[-1].length / rows[0].length)


def table(timings: list[Timing], length: str, memory: str | None = None) -> str:
    """Markdown rows of `timings` with µs per step and the ratio to S5 at the same length. With a
    `memory` column header (training), also the total seconds, per step = seconds / T."""
    columns = [length, "model", *(["seconds"] if memory else []), "µs/step", "× S5"]
    columns += [memory] if memory else []
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    s5 = {t.length: t.seconds for t in timings if t.model == "S5"}
    for t in timings:
        if t.seconds is None:
            cells = ["skipped"] + [""] * (len(columns) - 3)
        else:
            per_step = f"{t.seconds / (t.length if memory else 1) * 1e6:.4g}"
            cells = [per_step, f"{t.seconds / s5[t.length]:.2f}"]
            if memory:
                cells = [f"{t.seconds:.4g}", *cells, f"{t.memory / 2**20:.1f}"]
        lines.append("| " + " | ".join([str(t.length), t.model, *cells]) + " |")
    return "\n".join(lines)


def plot(training: list[Timing], acting: list[Timing], path: str) -> None:
    from common.plotting import plt, save

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, timings, xlabel, ylabel in (
        (axes[0], training, "sequence length T", "forward + backward seconds"),
        (axes[1], acting, "context position t", "seconds per acting step"),
    ):
        for model in dict.fromkeys(t.model for t in timings):
            rows = [t for t in timings if t.model == model and t.seconds is not None]
            ax.loglog([t.length for t in rows], [t.seconds for t in rows], "o-", label=model)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=64, help="a multiple of 32 (head dim)")
    parser.add_argument("--max-steps", type=int, default=STEPS[-1], help="largest T and t")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-attention-gib", type=float, default=4.0)
    parser.add_argument("--plot", default=None, help="write the log-log plot here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = [t for t in STEPS if t <= args.max_steps]
    models = build_models(args.width, device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device={hardware}  threads={torch.get_num_threads()}  torch={torch.__version__}  "
        f"B={args.batch}  width={args.width}  float32  resets={RESET_RATE:.0%}\n"
    )
    memory = "peak allocated MiB (CUDA)" if device.type == "cuda" else "saved for backward MiB"
    training = training_timings(
        models, args.batch, args.width, steps, args.repeats, device, args.max_attention_gib * 2**30
    )
    print("Training: forward + backward over (B, T); µs/step = seconds / T\n")
    print(table(training, "T", memory))
    acting = acting_timings(models, args.batch, args.width, steps, args.repeats, device)
    print("\nActing: one step of B environments at context position t (no grad)\n")
    print(table(acting, "t"))
    print(f"\nlog-log slope of training seconds vs T over T = {steps[-2:]}:")
    for model in models:
        print(f"  {model}: {slope(training, model):.2f}")
    if args.plot:
        plot(training, acting, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
