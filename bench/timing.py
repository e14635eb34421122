"""The one timing rule of every benchmark: the fastest of several runs, after a warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from common.device import timer


def best_seconds(
    fns: list[Callable[[], object]], device: torch.device, repeats: int
) -> list[float]:
    """Fastest run of each function, taking turns so that all see the same machine load: at
    least `repeats` rounds after a warm-up, more (up to 100) until 0.25 s has been spent."""
    for fn in fns:
        fn()  # warm-up (and Triton compilation)
    best, total, rounds = [math.inf] * len(fns), 0.0, 0
    while rounds < repeats or (total < 0.25 and rounds < 100):
        for i, fn in enumerate(fns):
            with timer(device) as elapsed:
                fn()
            best[i] = min(best[i], elapsed["seconds"])
            total += elapsed["seconds"]
        rounds += 1
    return best
