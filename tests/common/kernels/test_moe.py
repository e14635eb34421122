"""MoE: Triton grouped GEMM vs float64, dropless layer vs a dense float64 oracle, capacity dropping,
auxiliary losses by hand, gradcheck, torch.compile, bad input.

The Triton kernels run on the CPU interpreter here (conftest sets TRITON_INTERPRET=1): small
shapes, fp32 and fp16 only.
"""

import math

import pytest
import torch
import torch.nn.functional as F
import triton
from torch.func import functional_call

import common.kernels.attention.triton as attention_triton
import common.kernels.moe.triton as moe_triton
from common.kernels.backend import fp32_dot_precision
from common.kernels.moe import MoE, grouped_mm, grouped_mm_reference, moe_reference
from common.kernels.moe.triton import BLOCK_M


def rel_err(value: torch.Tensor, ref: torch.Tensor) -> float:
    return ((value.double() - ref).abs().max() / ref.abs().max()).item()


def offsets_of(counts: list[int]) -> torch.Tensor:
    return F.pad(torch.tensor(counts).cumsum(0), (1, 0)).to(torch.int32)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 1e-3)])
def test_triton_grouped_mm_matches_float64(dtype, tol):
    # Expert 0 spans two row tiles, expert 1 has no tokens, the rest are ragged.
    counts = [BLOCK_M + 6, 0, 5, 25]
    offsets = offsets_of(counts)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(counts), 32, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(4, 32, 64, generator=g) / 6).to(dtype).requires_grad_()
    dy = torch.randn(sum(counts), 64, generator=g).to(dtype)

    y = grouped_mm(x, w, offsets)
    y.backward(dy)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    y64 = grouped_mm_reference(x64, w64, offsets)
    y64.backward(dy.double())

    assert y.dtype == dtype and y.shape == (sum(counts), 64)
    assert rel_err(y, y64) < tol
    assert rel_err(x.grad, x64.grad) < tol
    assert rel_err(w.grad, w64.grad) < tol
    assert torch.count_nonzero(w.grad[1]) == 0  # no tokens, no weight gradient
    # The float64 reference is itself the per-expert product.
    assert torch.allclose(y64[offsets[2] : offsets[3]], x64[offsets[2] : offsets[3]] @ w64[2])


def test_triton_grouped_mm_strided_offsets_and_tail_rows():
    """A non-contiguous offsets view reads the right offsets; rows past offsets[-1] are 0."""
    offsets = torch.tensor([0, 0, 10, 10, 30, 30, 50, 50], dtype=torch.int32)[::2]  # 0 10 30 50
    assert not offsets.is_contiguous()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(60, 16, generator=g, requires_grad=True)
    w = torch.randn(3, 16, 16, generator=g, requires_grad=True)
    dy = torch.randn(60, 16, generator=g)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    y = grouped_mm(x, w, offsets)
    y.backward(dy)
    y64 = grouped_mm_reference(x64, w64, offsets.contiguous())
    y64.backward(dy.double())
    for got, want in ((y, y64), (x.grad, x64.grad), (w.grad, w64.grad)):
        assert rel_err(got, want) < 1e-5
    assert torch.equal(y[50:], torch.zeros(10, 16))
    assert torch.equal(x.grad[50:], torch.zeros(10, 16))


@pytest.mark.parametrize(("counts", "rows"), [([1, 1, 1], 200), ([63, 63], 127), ([0, 0], 65)])
def test_grouped_mm_kernel_writes_every_output_row(counts, rows):
    """grouped_mm allocates its output uninitialised: the kernel alone must write every row,
    the ones past offsets[-1] with zeros (the spare programs of the grid). Checked on an output
    pre-filled with NaN, including a tail longer than the experts' rows."""
    offsets = offsets_of(counts)
    g = torch.Generator().manual_seed(10)
    x, w = torch.randn(rows, 16, generator=g), torch.randn(len(counts), 16, 72, generator=g)
    y = torch.full((rows, 72), float("nan"))
    grid = (triton.cdiv(rows, BLOCK_M) + len(counts), triton.cdiv(72, moe_triton.BLOCK_N))
    moe_triton._grouped_mm_kernel[grid](
        x, w, y, offsets, len(counts), rows, 72, 16, *x.stride(), *w.stride(), *y.stride(),
        BLOCK_M=BLOCK_M, BLOCK_N=moe_triton.BLOCK_N, BLOCK_K=moe_triton.BLOCK_K,
        INPUT_PRECISION="ieee",
    )  # fmt: skip
    torch.testing.assert_close(y, grouped_mm_reference(x, w, offsets))


def test_triton_grouped_mm_with_tf32_set_through_fp32_precision():
    """torch 2.13 raises on reading `allow_tf32` once TF32 was set with the fp32_precision API;
    the kernel reads fp32_precision. (Whether TF32 is used only matters on a GPU.)"""
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        x, w = torch.randn(20, 16), torch.randn(2, 16, 16)
        y = grouped_mm(x, w, offsets_of([7, 13]))
    finally:
        matmul.fp32_precision = previous
    torch.testing.assert_close(y, torch.cat([x[:7] @ w[0], x[7:] @ w[1]]), rtol=1e-2, atol=1e-2)


def test_grouped_mm_op_registration():
    """Schema, fake (meta) implementation and autograd formula, as torch.compile sees them."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 16, generator=g, requires_grad=True)
    w = torch.randn(3, 16, 16, generator=g, requires_grad=True)
    torch.library.opcheck(grouped_mm, (x, w, offsets_of([7, 0, 13])))


def dense_oracle(x, router_weight, w1, w3, w2, top_k, keep=None):
    """Every expert on every token, combined with a dense (N, E) gate matrix: no loop, no sort."""
    probs = (x @ router_weight.T).softmax(-1)
    top, ids = probs.topk(top_k, dim=-1)
    gates = top / top.sum(-1, keepdim=True) if top_k > 1 else top
    if keep is not None:
        gates = gates * keep
    gate_matrix = torch.zeros_like(probs).scatter(1, ids, gates)
    h = F.silu(torch.einsum("nd,edh->enh", x, w1)) * torch.einsum("nd,edh->enh", x, w3)
    return torch.einsum("ne,end->nd", gate_matrix, torch.einsum("enh,ehd->end", h, w2))


def names_and_grads(layer: MoE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


@pytest.mark.parametrize(
    ("backend", "top_k", "dtype", "tol"),
    [
        ("reference", 1, torch.float32, 1e-5),
        ("reference", 2, torch.float32, 1e-5),
        ("triton", 1, torch.float32, 1e-5),
        ("triton", 2, torch.float32, 1e-5),
        ("triton", 2, torch.float16, 5e-3),
    ],
)
def test_dropless_layer_matches_float64_oracle(backend, top_k, dtype, tol):
    torch.manual_seed(0)
    layer = MoE(32, 64, 4, top_k, backend=backend)
    x = torch.randn(2, 25, 32)
    dy = torch.randn(2, 25, 32)
    layer64 = MoE(32, 64, 4, top_k, backend="reference").double()
    layer64.load_state_dict(layer.state_dict())
    layer.to(dtype)
    x64, x = x.double().requires_grad_(), x.to(dtype).requires_grad_()

    out = layer(x)
    out.output.backward(dy.to(dtype))
    params = dict(layer64.named_parameters())
    oracle = dense_oracle(
        x64.view(-1, 32), params["router.weight"], params["w1"], params["w3"], params["w2"], top_k
    )
    oracle.view(2, 25, 32).backward(dy.double())

    assert out.output.dtype == dtype and out.output.shape == (2, 25, 32)
    assert rel_err(out.output, oracle.view(2, 25, 32)) < tol
    assert int(out.tokens_per_expert.sum()) == 50 * top_k  # dropless: every assignment computed
    grads, grads64 = names_and_grads(layer, x), names_and_grads(layer64, x64)
    for name, grad64 in grads64.items():
        assert rel_err(grads[name], grad64) < tol, name


def test_loop_reference_matches_dense_oracle():
    g = torch.Generator().manual_seed(2)
    x, router = torch.randn(30, 8, generator=g).double(), torch.randn(3, 8, generator=g).double()
    w1, w3 = torch.randn(2, 3, 8, 16, generator=g).double()
    w2 = torch.randn(3, 16, 8, generator=g).double()
    top, ids = (x @ router.T).softmax(-1).topk(2, dim=-1)
    gates = top / top.sum(-1, keepdim=True)
    loop = moe_reference(x, ids, gates, w1, w3, w2)
    assert torch.allclose(loop, dense_oracle(x, router, w1, w3, w2, 2), atol=1e-12)


def routed_layer(backend: str, top_k: int, capacity_factor: float | None) -> MoE:
    """dim 8, 4 experts; the router reads the first 4 features only: logits_e = 10 · x_e."""
    torch.manual_seed(3)
    layer = MoE(8, 16, 4, top_k, capacity_factor=capacity_factor, backend=backend)
    with torch.no_grad():
        layer.router.weight.copy_(10 * torch.eye(4, 8))
    return layer


def tokens_to(choices: list[tuple[int, ...]]) -> torch.Tensor:
    """Tokens whose router features make expert choices[n][0] first, choices[n][1] second."""
    x = torch.randn(1, len(choices), 8, generator=torch.Generator().manual_seed(4))
    x[..., :4] = 0
    for n, experts in enumerate(choices):
        for value, e in zip((1.0, 0.7), experts, strict=False):
            x[0, n, e] = value
    return x


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_capacity_top1_drops_tokens_over_capacity_in_token_order(backend):
    experts = [0, 0, 2, 0, 1, 0, 2, 2]
    x = tokens_to([(e,) for e in experts])
    # capacity = ceil(1.0 · 8 tokens · k=1 / 4 experts) = 2: expert 0 keeps tokens 0, 1 and drops
    # 3, 5; expert 2 keeps 2, 6 and drops 7; expert 1 keeps 4.
    dropped = [3, 5, 7]
    out = routed_layer(backend, 1, 1.0)(x)
    full = routed_layer(backend, 1, None)(x)

    assert out.tokens_per_expert.tolist() == [2, 1, 2, 0]
    assert full.tokens_per_expert.tolist() == [4, 1, 3, 0]
    assert torch.equal(out.output[0, dropped], torch.zeros(3, 8))
    kept = [n for n in range(8) if n not in dropped]
    assert torch.count_nonzero(full.output[0, dropped].abs().sum(-1)) == 3
    torch.testing.assert_close(out.output[0, kept], full.output[0, kept])
    # The load-balancing loss counts assignments before dropping (Switch's f_i).
    torch.testing.assert_close(out.aux_loss, full.aux_loss)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_capacity_top2_drops_single_assignments(backend):
    choices = [(0, 1), (0, 2), (1, 0), (0, 1), (2, 3), (0, 3)]
    x = tokens_to(choices)
    # capacity = ceil(1.0 · 6 · 2 / 4) = 3. In token order expert 0 receives tokens 0, 1, 2
    # (token 2's second choice), 3, 5: tokens 3 and 5 lose their first choice and keep only
    # their second (with its gate unchanged). Slot priority (GShard) would drop 2 and 5 instead.
    keep = torch.ones(6, 2)
    keep[3, 0] = keep[5, 0] = 0
    layer = routed_layer(backend, 2, 1.0)
    out = layer(x)
    params = {n: p.detach().double() for n, p in layer.named_parameters()}
    expected = dense_oracle(
        x[0].double(), params["router.weight"], params["w1"], params["w3"], params["w2"], 2, keep
    )
    assert out.tokens_per_expert.tolist() == [3, 3, 2, 2]
    torch.testing.assert_close(out.output[0].double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_empty_input(backend):
    """No tokens: an empty output, zero (not 0 / 0) losses, and a backward pass that runs."""
    layer = MoE(8, 16, 4, 2, backend=backend)
    x = torch.randn(1, 0, 8, requires_grad=True)
    out = layer(x)
    assert out.output.shape == (1, 0, 8)
    assert out.aux_loss.item() == 0 and out.z_loss.item() == 0
    assert out.tokens_per_expert.tolist() == [0, 0, 0, 0]
    (out.output.sum() + out.aux_loss + out.z_loss).backward()
    assert torch.count_nonzero(layer.router.weight.grad) == 0


def test_aux_and_z_loss_by_hand():
    layer = MoE(2, 4, 2, 1, backend="reference")
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))  # logits = x
    ln3 = math.log(3.0)
    # Router probabilities (3/4, 1/4) for tokens 0, 1, 3 and (1/4, 3/4) for token 2.
    x = torch.tensor([[[ln3, 0.0], [ln3, 0.0], [0.0, ln3], [ln3, 0.0]]])
    out = layer(x)
    f = torch.tensor([3 / 4, 1 / 4])  # share of tokens dispatched to each expert
    p = torch.tensor([(3 * 0.75 + 0.25) / 4, (3 * 0.25 + 0.75) / 4])  # mean probabilities
    assert math.isclose(out.aux_loss.item(), 0.01 * 2 * float((f * p).sum()), rel_tol=1e-6)
    assert math.isclose(out.aux_loss.item(), 0.01125, rel_tol=1e-6)
    # logsumexp(ln 3, 0) = ln 4 for every token.
    assert math.isclose(out.z_loss.item(), 1e-3 * math.log(4.0) ** 2, rel_tol=1e-6)
    assert out.tokens_per_expert.tolist() == [3, 1]
    # Top-2 of 2 experts sends every token everywhere: f = (1/2, 1/2), so the loss is α.
    top2 = MoE(2, 4, 2, 2, aux_loss_coef=0.05, backend="reference")
    assert math.isclose(top2(x).aux_loss.item(), 0.05, rel_tol=1e-6)


def test_softmax_before_or_after_topk():
    torch.manual_seed(5)
    x = torch.randn(1, 10, 16)
    layers = {}
    for top_k in (1, 2):
        for before in (True, False):
            layers[top_k, before] = MoE(16, 8, 4, top_k, softmax_before_topk=before)
            torch.manual_seed(6)
            layers[top_k, before].reset_parameters()
    # k = 2: renormalised top-k of the softmax = softmax of the top-k logits.
    torch.testing.assert_close(layers[2, True](x).output, layers[2, False](x).output)
    # k = 1: before gives p_i(x) · E_i(x) (Switch), after gives E_i(x) (gate 1).
    p_top = (x @ layers[1, True].router.weight.T).softmax(-1).amax(-1, keepdim=True)
    torch.testing.assert_close(layers[1, True](x).output, p_top * layers[1, False](x).output)


@pytest.mark.parametrize("capacity_factor", [None, 0.7])
def test_gradcheck_reference_path(capacity_factor):
    torch.manual_seed(7)
    layer = MoE(4, 6, 3, 2, capacity_factor=capacity_factor, backend="reference").double()
    names = [n for n, _ in layer.named_parameters()]
    inputs = (torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True),) + tuple(
        p.detach().clone().requires_grad_() for p in layer.parameters()
    )

    def fn(x, *params):
        out = functional_call(layer, dict(zip(names, params, strict=True)), (x,))
        return out.output, out.aux_loss, out.z_loss

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(8)
    layer = MoE(32, 32, 4, 2, backend="triton")
    x = torch.randn(1, 20, 32, requires_grad=True)
    eager = layer(x).output
    (gx_eager,) = torch.autograd.grad(eager.sum(), x)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x).output
    (gx_compiled,) = torch.autograd.grad(compiled.sum(), x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(gx_compiled, gx_eager)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 5}, r"top_k=5 must be in \[1, num_experts=4\]"),
        ({"top_k": 0}, r"top_k=0"),
        ({"capacity_factor": 0.0}, r"capacity_factor=0.0 must be a finite number > 0"),
        ({"capacity_factor": float("nan")}, r"capacity_factor=nan"),
        ({"backend": "cuda"}, r"backend='cuda' is not allowed"),
        ({"hidden_dim": 0}, r"hidden_dim=0"),
    ],
)
def test_bad_config_raises(kwargs, match):
    config = {"dim": 8, "hidden_dim": 16, "num_experts": 4, "top_k": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        MoE(**config)


def test_bad_input_raises():
    layer = MoE(8, 16, 4, 2)
    with pytest.raises(ValueError, match=r"\(B, T, dim=8\); got \(3, 8\)"):
        layer(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"\(B, T, dim=8\); got \(2, 3, 6\)"):
        layer(torch.randn(2, 3, 6))
    x, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    with pytest.raises(ValueError, match=r"x \(10, 6\) has K=6 but w \(3, 8, 4\) has K=8"):
        grouped_mm(torch.randn(10, 6), w, offsets_of([3, 3, 4]))
    with pytest.raises(ValueError, match=r"shape \(E \+ 1,\) = \(4,\).*int64 \(4,\)"):
        grouped_mm(x, w, offsets_of([3, 3, 4]).long())
    with pytest.raises(ValueError, match=r"got torch.int32 \(3,\)"):
        grouped_mm(x, w, offsets_of([3, 7]))
    with pytest.raises(ValueError, match=r"x is torch.float16 but w is torch.float32"):
        grouped_mm(x.half(), w, offsets_of([3, 3, 4]))


@pytest.mark.parametrize("setting, expected", [("ieee", "ieee"), ("tf32", "tf32")])
def test_one_tf32_policy_for_attention_and_moe(setting, expected):
    """float32 dot products in both kernels follow torch.backends.cuda.matmul.fp32_precision;
    half-precision inputs get Triton's default whatever the setting."""
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = setting
    try:
        q = torch.zeros(1, 1, 16, 32)
        assert attention_triton._mask_flags(q, None, True, 0)["PRECISION"] == expected
        assert fp32_dot_precision(torch.float32) == expected
        assert attention_triton._mask_flags(q.half(), None, True, 0)["PRECISION"] is None
        assert fp32_dot_precision(torch.bfloat16) is None
        # the MoE launch reads the same function (recorded from the kernel's arguments)
        seen = {}
        kernel = moe_triton._grouped_mm_kernel

        class Recorder:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    seen["precision"] = kwargs["INPUT_PRECISION"]
                    return kernel[grid](*args, **kwargs)

                return launch

        moe_triton._grouped_mm_kernel = Recorder()
        try:
            grouped_mm(torch.randn(20, 16), torch.randn(2, 16, 16), offsets_of([7, 13]))
        finally:
            moe_triton._grouped_mm_kernel = kernel
        assert seen["precision"] == expected
    finally:
        matmul.fp32_precision = previous
