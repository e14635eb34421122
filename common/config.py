"""Config validation every paper's `validate(cfg)` uses: a bad value or a bad type fails before
any work starts, with one message shape naming the field and what is allowed.

    check_number(cfg.trainer, "lr", "trainer.")                  # a number > 0
    check_number(cfg.model, "layers", "model.", integer=True)     # an int > 0
    check_number(cfg.data, "noise", "data.", low=0.0, high=1.0, inclusive=True)
    check_choice(cfg.env, "task", "env.", TASKS)

`trainer.lr=abc` reaches a paper as the string "abc": it is rejected here as "a number", exactly
as `trainer.lr=-1` is, instead of a TypeError deep inside the optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def fail(field: str, value: Any, allowed: str) -> None:
    """Raise the one error shape: `field=value is not valid: allowed`."""
    raise ValueError(f"{field}={value!r} is not valid: {allowed}")


def check_number(
    node: Mapping,
    key: str,
    prefix: str = "",
    *,
    integer: bool = False,
    low: float | None = 0.0,
    high: float | None = None,
    inclusive: bool = False,
) -> None:
    """node[key] must be a number (an int if `integer`; never a bool) with low < value < high
    (low <= value <= high with `inclusive`); a None bound is open."""
    value = node[key]
    kinds = (int,) if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds)
    if ok and low is not None:
        ok = value >= low if inclusive else value > low
    if ok and high is not None:
        ok = value <= high if inclusive else value < high
    if not ok:
        lo = "" if low is None else f"{low} {'<=' if inclusive else '<'} "
        hi = "" if high is None else f" {'<=' if inclusive else '<'} {high}"
        kind = "an integer" if integer else "a number"
        fail(prefix + key, value, f"{kind}{' with ' + lo + 'x' + hi if lo or hi else ''}")


def check_choice(node: Mapping, key: str, prefix: str, allowed: Iterable) -> None:
    """node[key] must be one of `allowed`."""
    allowed = tuple(allowed)
    if node[key] not in allowed:
        fail(prefix + key, node[key], f"one of {allowed}")
