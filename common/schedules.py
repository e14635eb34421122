"""Learning-rate schedules shared by the papers (as factors for torch's LambdaLR)."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """LR factor at an update step: linear warm-up over `warmup` steps to 1, then cosine decay
    to `floor` at `total` steps (and `floor` after)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
