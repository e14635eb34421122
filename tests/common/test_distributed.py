"""Two gloo processes on the CPU: all-reduce and DDP gradient averaging through common/."""

import os
import socket

import torch
import torch.multiprocessing as mp

from common.distributed import all_reduce_mean, cleanup, init_distributed, unwrap, wrap_ddp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    info = init_distributed(torch.device("cpu"))
    mean = all_reduce_mean(torch.tensor([float(rank + 1), 10.0 * rank]))

    torch.manual_seed(0)  # same initial weights on every rank
    model = wrap_ddp(torch.nn.Linear(3, 1, bias=False), info)
    x = torch.full((1, 3), float(rank + 1))  # each rank sees different data
    model(x).sum().backward()
    grad = unwrap(model).weight.grad.clone()
    results[rank] = (info.rank, info.world_size, info.is_main, mean, grad)
    cleanup()


def test_gloo_two_processes_all_reduce_and_ddp():
    world = 2
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(world, _free_port(), results), nprocs=world, join=True)
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
