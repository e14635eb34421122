"""causal_seq speed: training throughput and acting with a KV cache vs re-reading the prefix.

    python -m bench.causal_seq [--batch 128] [--repeats 5]

Acting is what counterfactual teaching pays for on every step (the model must roll out its own
actions before each update), so the transformer decodes incrementally with a key/value cache;
the baseline re-runs the whole prefix at every step.
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import best_seconds
from causal_seq.data import make_task, rollout, sample_theta, token_dim
from causal_seq.model import ModelConfig, build_model
from causal_seq.train import soft_cross_entropy

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    task = make_task("bandit", num_arms=4, p_best=0.8, p_other=0.2, horizon=30)
    generator = torch.Generator().manual_seed(0)
    theta = sample_theta(task, args.batch, generator)
    print(f"threads={torch.get_num_threads()}  batch={args.batch}  horizon={task.horizon}\n")
    print("| model | counterfactual rollout (episodes/s) | update fwd+bwd (episodes/s) |")
    print("|---|---|---|")
    models = {}
    for name, layers in (("gru", 1), ("transformer", 2)):
        cfg = ModelConfig(name=name, hidden=64, layers=layers, heads=2, max_len=64)
        model = models[name] = build_model(token_dim(task), task.num_actions, cfg)
        traj = rollout(task, model, theta, generator, posteriors=False)

        def update(model=model, traj=traj):
            soft_cross_entropy(model(traj.tokens), traj.expert_probs).backward()

        act = lambda m=model: rollout(task, m, theta, generator, False)  # noqa: E731
        acting, learning = best_seconds([act, update], CPU, args.repeats)
        print(f"| {name} | {args.batch / acting:,.0f} | {args.batch / learning:,.0f} |")

    transformer = models["transformer"]
    tokens = torch.randn(args.batch, task.horizon, token_dim(task))

    @torch.no_grad()
    def cached():
        state = transformer.initial_state(args.batch)
        for t in range(task.horizon):
            _, state = transformer.step(tokens[:, t], state)

    @torch.no_grad()
    def recompute():
        for t in range(task.horizon):
            transformer(tokens[:, : t + 1])[:, -1]

    with_cache, without = best_seconds([cached, recompute], CPU, args.repeats)
    print("\n| transformer acting, 30 steps | seconds | ratio |")
    print("|---|---|---|")
    print(f"| re-read prefix every step | {without:.4f} | 1.00 |")
    print(f"| KV cache | {with_cache:.4f} | {without / with_cache:.2f}x faster |")


if __name__ == "__main__":
    main()
