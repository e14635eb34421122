"""Speed of ALD's parts (Parisotto & Salakhutdinov 2021; issue 12): what one acting step costs
for the LSTM actor and the GTrXL learner network, and the env steps/s of the whole asynchronous
system with 1, 2 and 4 actor processes.

    python -m bench.ald [--steps 40960] [--actors 1,2,4] [--algos ald,transformer,lstm]
                        [--memories 24,96] [--repeats 3]

Acting: one step of B environments (B = 1 and 16) with the state carried, 1 thread, the
small tier's network sizes (LSTM width 64; GTrXL width 64, 2 blocks, memory M). Throughput:
`ald.train` on the small tier's I-Maze for `--steps` environment steps per configuration
(env steps / learner seconds, start-up excluded). On a 2-core machine more than one actor
process competes with the learner for the cores. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ald.model import build_net
from ald.train import run
from bench.timing import best_seconds

CONF = str(Path(__file__).parents[1] / "ald" / "conf")


def small_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=small", *overrides])


def acting_table(memories: list[int], repeats: int) -> list[tuple[str, int, float]]:
    cfg = small_config([])
    specs = {"LSTM": {"name": "lstm", **OmegaConf.to_container(cfg.networks.lstm)}}
    for memory in memories:
        gtrxl = {"name": "gtrxl", **OmegaConf.to_container(cfg.networks.gtrxl), "memory": memory}
        specs[f"GTrXL M={memory}"] = gtrxl
    rows = []
    for label, spec in specs.items():
        net = build_net(spec, 5, 3).eval()
        for batch in (1, 16):
            obs = torch.randn(batch, 1, 5)
            first = torch.zeros(batch, 1, dtype=torch.bool)
            state = net.initial_state(batch)

            def step(net=net, obs=obs, first=first, state=state):
                with torch.no_grad():
                    return net(obs, first, state)

            (seconds,) = best_seconds([step], torch.device("cpu"), repeats)
            rows.append((label, batch, seconds))
    return rows


def throughput(algo: str, actors: int, steps: int) -> float:
    cfg = small_config(
        [
            f"algo={algo}",
            f"runtime.num_actors={actors}",
            f"total_steps={steps}",
            "trainer.checkpoint_every=100000",
        ]
    )
    with tempfile.TemporaryDirectory() as run_dir:
        return run(cfg, Path(run_dir))["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40960)
    parser.add_argument("--actors", default="1,2,4")
    parser.add_argument("--algos", default="ald,transformer,lstm")
    parser.add_argument("--memories", default="24,96")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("| acting network | batch | ms per step | × LSTM |")
    print("|---|---|---|---|")
    rows = acting_table([int(m) for m in args.memories.split(",")], args.repeats)
    lstm = {batch: s for label, batch, s in rows if label == "LSTM"}
    for label, batch, seconds in rows:
        print(f"| {label} | {batch} | {1e3 * seconds:.3f} | {seconds / lstm[batch]:.1f} |")

    actors = [int(a) for a in args.actors.split(",")]
    print("\n| algo | " + " | ".join(f"{a} actor(s): env steps/s" for a in actors) + " |")
    print("|---|" + "---|" * len(actors))
    for algo in args.algos.split(","):
        speeds = [throughput(algo, a, args.steps) for a in actors]
        print(f"| {algo} | " + " | ".join(f"{s:,.0f}" for s in speeds) + " |")


if __name__ == "__main__":
    main()
