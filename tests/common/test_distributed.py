"""Two gloo processes on the CPU: all-reduce and DDP gradient averaging through common/."""

import torch

from common.distributed import all_reduce_mean, init_distributed, spawn_local, unwrap, wrap_ddp


def _worker(rank: int, world: int):
    info = init_distributed(torch.device("cpu"))  # already joined: returns this rank's info
    mean = all_reduce_mean(torch.tensor([float(rank + 1), 10.0 * rank]))

    torch.manual_seed(0)  # same initial weights on every rank
    model = wrap_ddp(torch.nn.Linear(3, 1, bias=False), info)
    x = torch.full((1, 3), float(rank + 1))  # each rank sees different data
    model(x).sum().backward()
    grad = unwrap(model).weight.grad.clone()
    return info.rank, info.world_size, info.is_main, mean, grad


def test_gloo_two_processes_all_reduce_and_ddp():
    world = 2
    results = spawn_local(_worker, world)
    for rank in range(world):
        got_rank, got_world, is_main, mean, grad = results[rank]
        assert (got_rank, got_world, is_main) == (rank, world, rank == 0)
        assert torch.allclose(mean, torch.tensor([1.5, 5.0]))
        # d/dw of w·x is x; DDP averages the ranks' inputs (1 and 2) -> 1.5
        assert torch.allclose(grad, torch.full((1, 3), 1.5))


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed(torch.device("cpu"))
    assert (info.rank, info.world_size, info.enabled) == (0, 1, False)
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model
    t = torch.tensor([3.0])
    assert torch.equal(all_reduce_mean(t), t)
