"""Expert-parallel MoE on two gloo processes vs the single-process layer with the same weights."""

import pytest
import torch

from common.distributed import spawn_local
from common.kernels.moe import ExpertParallelMoE, MoE, MoEOutput

WORLD, DIM, HIDDEN, EXPERTS, TOP_K = 2, 16, 32, 4, 2
CASES = [(backend, cf) for backend in ("reference", "triton") for cf in (None, 1.0)]


def _layer(backend: str, capacity_factor: float | None) -> MoE:
    torch.manual_seed(0)  # the same full layer on every rank and in the test process
    return MoE(DIM, HIDDEN, EXPERTS, TOP_K, capacity_factor=capacity_factor, backend=backend)


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's tokens and upstream gradient; the ranks hold different numbers of tokens."""
    g = torch.Generator().manual_seed(100 + rank)
    tokens = 9 + 4 * rank
    return torch.randn(1, tokens, DIM, generator=g), torch.randn(1, tokens, DIM, generator=g)


def _worker(rank: int, world: int) -> dict:
    out = {}
    for backend, capacity_factor in CASES:
        layer = ExpertParallelMoE(_layer(backend, capacity_factor))
        x, dy = _data(rank)
        x.requires_grad_()
        result = layer(x)
        (result.output * dy).sum().backward()
        grads = {name: p.grad for name, p in layer.named_parameters()}
        out[backend, capacity_factor] = (MoEOutput(*(t.detach() for t in result)), x.grad, grads)
    try:
        ExpertParallelMoE(MoE(DIM, HIDDEN, 3, 1))
    except ValueError as error:
        out["error"] = str(error)
    return out


@pytest.fixture(scope="module")
def distributed_results():
    return spawn_local(_worker, WORLD)


def _single_process(backend: str, capacity_factor: float | None):
    """Dropless: the whole global batch at once. Capacity: each rank's tokens on their own
    (capacity is counted per rank, GShard's per-group capacity). Gradients summed over ranks."""
    layer = _layer(backend, capacity_factor)
    data = [_data(rank) for rank in range(WORLD)]
    xs = [x.requires_grad_() for x, _ in data]
    if capacity_factor is None:
        global_batch = layer(torch.cat(xs, dim=1))
        outputs = global_batch.output.split([x.shape[1] for x in xs], dim=1)
        results = [None] * WORLD
    else:
        results = [layer(x) for x in xs]
        outputs = [r.output for r in results]
    sum((out * dy).sum() for out, (_, dy) in zip(outputs, data, strict=True)).backward()
    return layer, outputs, [x.grad for x in xs], results


@pytest.mark.parametrize(("backend", "capacity_factor"), CASES)
def test_expert_parallel_matches_single_process(distributed_results, backend, capacity_factor):
    layer, outputs, x_grads, results = _single_process(backend, capacity_factor)
    local = EXPERTS // WORLD
    router_grad = 0
    for rank in range(WORLD):
        result, x_grad, grads = distributed_results[rank][backend, capacity_factor]
        torch.testing.assert_close(result.output, outputs[rank].detach())
        torch.testing.assert_close(x_grad, x_grads[rank])
        shard = slice(rank * local, (rank + 1) * local)
        for name in ("w1", "w3", "w2"):
            torch.testing.assert_close(grads[name], getattr(layer, name).grad[shard])
        router_grad = router_grad + grads["router.weight"]
        # Tokens really cross ranks: this rank routes some tokens to the other rank's experts.
        other = slice((1 - rank) * local, (2 - rank) * local)
        assert result.tokens_per_expert[other].sum() > 0
        if results[rank] is not None:
            torch.testing.assert_close(result.aux_loss, results[rank].aux_loss.detach())
            torch.testing.assert_close(result.z_loss, results[rank].z_loss.detach())
            assert torch.equal(result.tokens_per_expert, results[rank].tokens_per_expert)
    # The router is replicated: its data-parallel gradient is the sum over ranks.
    torch.testing.assert_close(router_grad, layer.router.weight.grad)


def test_expert_parallel_rejects_uneven_sharding(distributed_results):
    assert "num_experts=3 must be divisible" in distributed_results[0]["error"]
    assert "world size 2" in distributed_results[0]["error"]
