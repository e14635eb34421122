"""bench.fsdp_memory: 16 bytes per parameter on paper, and measured shards that match it."""

import pytest
import torch

from bench.fsdp_memory import GATHERED_BYTES, SIZES, WORLDS, measure, paper_table, per_rank_bytes
from common.distributed import spawn_local


def test_sixteen_bytes_per_parameter_in_one_plain_process():
    """Counted on a real fp32 AdamW step: parameter, gradient, exp_avg and exp_avg_sq."""
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 5)).sum().backward()
    optimizer.step()
    tensors = [*model.parameters(), *(p.grad for p in model.parameters())]
    tensors += [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    counted = sum(t.numel() * t.element_size() for t in tensors)
    params = sum(p.numel() for p in model.parameters())
    assert counted == per_rank_bytes(params, 1)
    assert per_rank_bytes(params, 8) == counted / 8


def test_paper_table_has_every_size_mode_and_world():
    table = paper_table([*SIZES, 7e9], layers=24).splitlines()
    assert len(table) == 2 + 4 * len(GATHERED_BYTES)
    assert all(f"world {w}" in table[0] for w in WORLDS)
    assert f"| {1.18e9 * 16 / 64 / 2**30:.3g} |" in table[6]  # 1.18B, fp32, 64 ranks


def test_measured_shards_are_half_at_two_ranks():
    one, (rank0, rank1) = spawn_local(measure, 1, 64, 32, 2), spawn_local(measure, 2, 64, 32, 2)
    for rank in (rank0, rank1):
        shards = rank["parameters"] + rank["gradients"] + rank["adamw"]
        assert shards == pytest.approx(per_rank_bytes(rank["params"], 2), rel=0.02)  # padding
    full = one[0]["parameters"] + one[0]["gradients"] + one[0]["adamw"]
    assert full == per_rank_bytes(one[0]["params"], 1)
