"""Speed of TDM planning (Schubert et al. 2023; issue 11): one MPC decision = one batched rollout
of N candidate sequences of H steps through the model, state token by state token.

    python -m bench.tdm [--candidates 32 128] [--horizon 12] [--obs-dim 5] [--act-dim 1]
                        [--dim 64] [--layers 2] [--repeats 3] [--threads 1]

Rows: the TDM with its KV cache (every state token costs one 1-token forward pass of N rows),
the same rollout rerunning the whole window for every token (no cache, the baseline), and the
MLP / 5-member ensemble on the same candidates. Model tokens/s counts the imagined tokens
(N · H · (D + A + 1)); decisions/s is the rate an MPC loop with that model could keep,
planning cost only. Randomly initialised models: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import best_seconds
from tdm.model import History, MLPDynamics, TrajectoryTransformer, TransformerConfig
from tdm.tokenizer import Tokenizer


def models(obs_dim: int, act_dim: int, dim: int, layers: int, window: int):
    g = torch.Generator().manual_seed(0)
    obs, acts, rews = (
        torch.randn(2, 9, obs_dim, generator=g),
        torch.rand(2, 8, act_dim),
        torch.rand(2, 8),
    )
    tok = Tokenizer.fit(256, obs[:, :-1], acts, rews)
    cfg = TransformerConfig(dim=dim, layers=layers, heads=dim // 32, max_timesteps=window)
    stats = MLPDynamics.fit_stats(obs, acts, rews)
    return (
        TrajectoryTransformer(cfg, tok, "dynamics").eval(),
        MLPDynamics(obs_dim, act_dim, 256, 3, 1, False, stats),
        MLPDynamics(obs_dim, act_dim, 256, 3, 5, True, stats),
        History(obs[0], acts[0], rews[0]),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, nargs="+", default=[32, 128])
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--obs-dim", type=int, default=5)
    p.add_argument("--act-dim", type=int, default=1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tdm, mlp, ensemble, history = models(
        args.obs_dim, args.act_dim, args.dim, args.layers, args.context + args.horizon + 1
    )
    slots = args.obs_dim + args.act_dim + 1
    gen = torch.Generator().manual_seed(0)
    print(
        f"TDM {args.layers} layers x {args.dim}, D={args.obs_dim}, A={args.act_dim}, "
        f"H={args.horizon}, context {args.context}, {torch.get_num_threads()} thread(s)"
    )
    print(
        "| candidates N | model | ms / decision | decisions/s | model tokens/s | vs TDM no cache |"
    )
    print("|---|---|---|---|---|---|")
    for n in args.candidates:
        actions = torch.rand(n, args.horizon, args.act_dim) * 2 - 1
        rows = {
            "TDM, KV cache": lambda a=actions: tdm.imagine(history, a, context=args.context),
            "TDM, no cache": lambda a=actions: tdm.imagine(
                history, a, context=args.context, use_cache=False
            ),
            "MLP": lambda a=actions: mlp.imagine(history, a, gen),
            "PETS ensemble (5)": lambda a=actions: ensemble.imagine(history, a, gen),
        }
        seconds = dict(
            zip(
                rows,
                best_seconds(list(rows.values()), torch.device("cpu"), args.repeats),
                strict=True,
            )
        )
        base = seconds["TDM, no cache"]
        for name, s in seconds.items():
            tokens = n * args.horizon * slots
            print(
                f"| {n} | {name} | {1e3 * s:.1f} | {1 / s:.1f} | {tokens / s:,.0f} | "
                f"{base / s:.1f}x |"
            )


if __name__ == "__main__":
    main()
