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
    """Outputs and input gradients to compare with: dropless, the whole global batch at once;
    capacity, each rank's tokens on their own (capacity is counted per rank, GShard's per-group
    capacity). Gradients summed over ranks. Also the layer on each rank's tokens alone (no
    gradient) and, dropless, the global batch's result."""
    layer = _layer(backend, capacity_factor)
    data = [_data(rank) for rank in range(WORLD)]
    xs = [x.requires_grad_() for x, _ in data]
    with torch.no_grad():
        per_rank = [layer(x) for x in xs]
    if capacity_factor is None:
        global_batch = layer(torch.cat(xs, dim=1))
        outputs = global_batch.output.split([x.shape[1] for x in xs], dim=1)
    else:
        global_batch = None
        outputs = [layer(x).output for x in xs]
    sum((out * dy).sum() for out, (_, dy) in zip(outputs, data, strict=True)).backward()
    return layer, outputs, [x.grad for x in xs], per_rank, global_batch


@pytest.mark.parametrize(("backend", "capacity_factor"), CASES)
def test_expert_parallel_matches_single_process(distributed_results, backend, capacity_factor):
    layer, outputs, x_grads, per_rank, global_batch = _single_process(backend, capacity_factor)
    local = EXPERTS // WORLD
    router_grad = 0
    results = [distributed_results[rank][backend, capacity_factor][0] for rank in range(WORLD)]
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
        # The losses and tokens_per_expert are per rank: those of the rank's own tokens.
        torch.testing.assert_close(result.aux_loss, per_rank[rank].aux_loss)
        torch.testing.assert_close(result.z_loss, per_rank[rank].z_loss)
        assert torch.equal(result.tokens_per_expert, per_rank[rank].tokens_per_expert)
    if global_batch is not None:
        # Dropless: the ranks' counts add up to the global batch's, and the global z-loss (a
        # mean over tokens) is the token-weighted mean of the ranks'. The aux loss (Σ f_i P_i)
        # does not decompose over ranks.
        total = sum(result.tokens_per_expert for result in results)
        assert torch.equal(total, global_batch.tokens_per_expert)
        sizes = [_data(rank)[0].shape[1] for rank in range(WORLD)]
        z_loss = sum(n * r.z_loss for n, r in zip(sizes, results, strict=True)) / sum(sizes)
        torch.testing.assert_close(z_loss, global_batch.z_loss.detach())
    # The router is replicated: its data-parallel gradient is the sum over ranks.
    torch.testing.assert_close(router_grad, layer.router.weight.grad)


def test_expert_parallel_rejects_uneven_sharding(distributed_results):
    assert "num_experts=3 must be divisible" in distributed_results[0]["error"]
    assert "world size 2" in distributed_results[0]["error"]
