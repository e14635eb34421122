"""The shared LR schedule: warm-up, cosine decay, floor."""

import math

import pytest

from common.schedules import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    factor = warmup_cosine(warmup=4, total=14, floor=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))  # halfway
    assert factor(14) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)
    values = [factor(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
