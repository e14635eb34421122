"""Gato input embedding (§2.2, App. C.3): patch ResNet block, patch positions, token lookup."""

import pytest
import torch

from gato.embedding import PatchEmbedding, TokenEmbedding, patch_position_indices
from gato.tokenizer import Continuous, Discrete, Image, Text, Vocab, image_patches, timestep_tokens


def test_eval_patch_positions_are_interval_means():
    # one patch covers [0, 1): indices 0 … 127, mean 63.5 rounded half up
    rows, cols = patch_position_indices((1, 1), batch=1, training=False)
    assert rows.tolist() == [[64]] and cols.tolist() == [[64]]
    # a 2 × 2 grid: halves [0, 64) and [64, 128), raster order
    rows, cols = patch_position_indices((2, 2), batch=3, training=False)
    assert rows.tolist() == [[32, 32, 96, 96]] * 3
    assert cols.tolist() == [[32, 96, 32, 96]] * 3
    # 5 rows (an 80-pixel-high image): rows [0.2, 0.4) → [⌊25.6⌋, ⌊51.2⌋) = [25, 51), mean 37.5 → 38
    rows, _ = patch_position_indices((5, 1), batch=1, training=False)
    assert rows.tolist() == [[12, 38, 63, 89, 115]]


def test_train_patch_positions_sample_the_whole_interval():
    torch.manual_seed(0)
    rows, cols = patch_position_indices((2, 2), batch=4000, training=True)
    top, bottom = rows[:, 0], rows[:, 2]
    assert top.min() == 0 and top.max() == 63  # uniform over [0, 64): both ends reached
    assert bottom.min() == 64 and bottom.max() == 127
    assert 28 < top.float().mean() < 35  # mean 31.5
    assert torch.equal(rows[:, 0], rows[:, 1]) and torch.equal(cols[:, 0], cols[:, 2])
    assert not torch.equal(rows[:, 0], cols[:, 0])  # rows and columns drawn independently


def test_patch_embedding_shape_and_position_randomness():
    torch.manual_seed(0)
    patches, grid = image_patches(torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8))
    embed = PatchEmbedding(dim=24)
    out = embed(patches, grid)
    assert out.shape == (2, 8, 24) and out.dtype == torch.float32
    assert not torch.allclose(out, embed(patches, grid))  # training: positions resampled
    embed.eval()
    with torch.no_grad():
        first, second = embed(patches, grid), embed(patches, grid)
    assert torch.equal(first, second)
    # evaluation adds exactly the tables' rows at the interval means
    rows, cols = patch_position_indices(grid, 2, training=False)
    with torch.no_grad():
        content = first - embed.row_embed(rows) - embed.col_embed(cols)
        embed.row_embed.weight.zero_()
        embed.col_embed.weight.zero_()
        assert torch.allclose(content, embed(patches, grid), atol=1e-6)


def test_patch_embedding_block_is_residual():
    torch.manual_seed(0)
    embed = PatchEmbedding(dim=16).eval()
    patches, grid = image_patches(torch.randint(0, 256, (1, 3, 16, 32), dtype=torch.uint8))
    with torch.no_grad():
        for p in embed.conv2.parameters():  # the block's branch is zero: only the skip is left
            p.zero_()
        skip = embed.proj(embed.stem(patches.flatten(0, 1)).flatten(1))
        rows, cols = patch_position_indices(grid, 1, training=False)
        want = skip[None] + embed.row_embed(rows) + embed.col_embed(cols)
        assert torch.allclose(embed(patches, grid), want, atol=1e-6)


def test_patch_embedding_is_per_patch():
    torch.manual_seed(0)
    embed = PatchEmbedding(dim=16).eval()
    patches, grid = image_patches(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    changed = patches.clone()
    changed[0, 1] = 0.0  # only patch 1 changes
    with torch.no_grad():
        before, after = embed(patches, grid), embed(changed, grid)
    same = torch.isclose(before, after).all(-1)[0]
    assert same.tolist() == [True, False, True, True]


def test_patch_embedding_gradients():
    torch.manual_seed(0)
    embed = PatchEmbedding(dim=16)
    patches, grid = image_patches(torch.randint(0, 256, (2, 3, 16, 32), dtype=torch.uint8))
    patches.requires_grad_(True)
    embed(patches, grid).square().sum().backward()
    for name, p in embed.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert patches.grad.abs().sum() > 0
    tiny = PatchEmbedding(dim=3, in_channels=1, channels=4, groups=2).double().eval()
    x = (torch.rand(1, 1, 1, 16, 16, dtype=torch.float64) * 0.5 - 0.25).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: tiny(p, (1, 1)), (x,), fast_mode=True)


def test_patch_embedding_errors():
    embed = PatchEmbedding(dim=8)
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 8, 8\)"):
        embed(torch.zeros(1, 2, 3, 8, 8), (1, 2))
    with pytest.raises(ValueError, match="2×2"):
        embed(torch.zeros(1, 3, 3, 16, 16), (2, 2))
    with pytest.raises(ValueError, match="channels=48"):
        PatchEmbedding(dim=8, channels=48, groups=32)


def test_token_embedding_lookup_patches_and_local_positions():
    torch.manual_seed(0)
    embed = TokenEmbedding(vocab_size=10, dim=4, local_positions=6)
    ids = torch.tensor([[1, 0, 0, 2, 9], [3, 0, 4, 5, 9]])
    local = torch.tensor([[0, 1, 2, 3, 6], [0, 1, 2, 6, 6]])
    is_image = ids == 0
    patches = torch.randn(3, 4, requires_grad=True)
    out = embed(ids, local, is_image, patches)
    assert out.shape == (2, 5, 4)
    token, pos = embed.token.weight, embed.local.weight
    for b, t in [(0, 0), (0, 3), (0, 4), (1, 0), (1, 2), (1, 3), (1, 4)]:
        want = token[ids[b, t]] + pos[local[b, t]]
        assert torch.allclose(out[b, t], want)
    # the image slots take the patches in row-major order, plus their local position
    for k, (b, t) in enumerate([(0, 1), (0, 2), (1, 1)]):
        assert torch.allclose(out[b, t], patches[k] + pos[local[b, t]])
    out.sum().backward()
    assert torch.equal(patches.grad, torch.ones(3, 4))
    assert embed.token.weight.grad[0].abs().sum() == 0  # the placeholder id never contributes
    assert embed.local.weight.grad[6].abs().sum() > 0
    plain = embed(ids, local)  # without images every token is a lookup
    assert torch.allclose(plain[0, 1], token[0] + pos[1])


def test_token_embedding_errors():
    embed = TokenEmbedding(vocab_size=10, dim=4)
    ids = torch.zeros(1, 3, dtype=torch.long)
    is_image = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="2 image positions"):
        embed(ids, ids, is_image, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        embed(ids, ids, is_image, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="both or neither"):
        embed(ids, ids, is_image)


def test_timestep_end_to_end():
    torch.manual_seed(0)
    vocab = Vocab(1024)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    patches, grid = image_patches(image)
    observation = {
        "camera": Image(grid[0] * grid[1]),
        "mission": Text([7, 8]),
        "q": Continuous([0.3]),
    }
    row = timestep_tokens(observation, Discrete([2, 5]), vocab)
    tokens = TokenEmbedding(vocab.size, dim=32)
    out = tokens(
        row.ids[None],
        row.local_positions[None],
        row.is_image[None],
        PatchEmbedding(dim=32)(patches, grid),
    )
    assert out.shape == (1, len(row), 32)
    assert torch.isfinite(out).all()
