"""Gato's input embedding f(·; θ_e) (Reed et al. 2022, §2.2; App. C.3).

- `PatchEmbedding`: each 16 × 16 image patch → one vector by a single ResNet v2 block (GroupNorm,
  GELU), plus learned row and column patch position encodings.
- `TokenEmbedding`: every other token (text, discrete and continuous values, separator) → a
  learned lookup in the shared vocabulary; the patch vectors take the image positions; a learned
  local observation position encoding is added to every token.

Embedding tables start as N(0, 0.02²) (GPT-2); the paper gives no initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gato.tokenizer import LOCAL_POSITIONS, PATCH

POSITION_BINS = 128  # quantisation of a patch's normalised row / column interval (App. C.3)


def _intervals(n: int, bins: int, device: torch.device | None) -> tuple[torch.Tensor, ...]:
    """Index intervals [lo, hi) of the n patch intervals [i / n, (i + 1) / n) of an axis, each end
    quantised to ⌊v · bins⌋: adjacent patches tile the table; hi ≥ lo + 1 even when n > bins."""
    i = torch.arange(n, device=device)
    lo = i * bins // n
    return lo, torch.maximum((i + 1) * bins // n, lo + 1)


def patch_position_indices(
    grid: tuple[int, int],
    batch: int,
    training: bool,
    bins: int = POSITION_BINS,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (batch, rows · cols), raster order, into the position tables
    (App. C.3, Fig. 15).

    A patch's pixel rows, normalised by the image height, form an interval quantised to `bins`
    levels, [lo, hi) (columns alike). Training samples an index uniformly from it; evaluation
    takes "the (rounded) mean of the interval", (lo + hi − 1) / 2 rounded half up = ⌊(lo + hi) / 2⌋.
    A sample is drawn per image and per grid row (column), so patches sharing a row interval share
    its index (our reading: the paper samples per interval, and that interval is the row's)."""
    rows, cols = grid

    def axis(n: int) -> torch.Tensor:
        lo, hi = _intervals(n, bins, device)
        if not training:
            return ((lo + hi) // 2).expand(batch, n)
        return lo + (torch.rand(batch, n, device=device) * (hi - lo)).long()

    return (
        axis(rows).repeat_interleave(cols, dim=1),
        axis(cols).repeat(1, rows),
    )


class PatchEmbedding(nn.Module):
    """Patches (B, N, C, 16, 16) of images on a rows × cols grid → (B, N, dim) (§2.2, App. C.3).

    A 1 × 1 convolution lifts the C pixel channels to `channels` (GroupNorm's 32 groups cannot
    split 3 channels; the paper does not say how the block's input is widened), then one
    pre-activation (v2) ResNet block with GroupNorm and GELU in place of BatchNorm and ReLU,

        x + conv₃ₓ₃(GELU(GN(conv₃ₓ₃(GELU(GN(x)))))),

    then a linear map of the flattened channels × 16 × 16 features to `dim`, and finally the row
    and column position encodings (`patch_position_indices`) are added."""

    def __init__(
        self,
        dim: int,
        in_channels: int = 3,
        channels: int = 32,
        groups: int = 32,
        position_bins: int = POSITION_BINS,
    ):
        super().__init__()
        if channels % groups:
            raise ValueError(
                f"channels={channels} is not valid: a multiple of groups={groups} (GroupNorm)"
            )
        self.in_channels, self.position_bins = in_channels, position_bins
        self.stem = nn.Conv2d(in_channels, channels, 1)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.proj = nn.Linear(channels * PATCH * PATCH, dim)
        self.row_embed = nn.Embedding(position_bins, dim)
        self.col_embed = nn.Embedding(position_bins, dim)
        for table in (self.row_embed, self.col_embed):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """patches (B, N, C, 16, 16) from `image_patches`, N = rows · cols of `grid`."""
        want = (self.in_channels, PATCH, PATCH)
        if patches.ndim != 5 or tuple(patches.shape[2:]) != want:
            raise ValueError(f"patches must be (B, N, {want}), got {tuple(patches.shape)}")
        b, n = patches.shape[:2]
        if n != grid[0] * grid[1]:
            raise ValueError(f"{n} patches per image do not fill a grid of {grid[0]}×{grid[1]}")
        x = self.stem(patches.flatten(0, 1))
        x = x + self.conv2(F.gelu(self.norm2(self.conv1(F.gelu(self.norm1(x))))))
        x = self.proj(x.flatten(1)).view(b, n, -1)
        rows, cols = patch_position_indices(
            grid, b, self.training, self.position_bins, patches.device
        )
        return x + self.row_embed(rows) + self.col_embed(cols)


class TokenEmbedding(nn.Module):
    """Ids (B, L) → (B, L, dim) (§2.2, App. C.3).

    A learned lookup in the shared vocabulary, replaced by the patch embedding where `is_image`;
    plus a learned local observation position encoding with `local_positions` + 1 rows, one per
    observation token index and one shared by the action tokens (`timestep_tokens`)."""

    def __init__(self, vocab_size: int, dim: int, local_positions: int = LOCAL_POSITIONS):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.local = nn.Embedding(local_positions + 1, dim)
        for table in (self.token, self.local):
            nn.init.normal_(table.weight, std=0.02)

    def forward(
        self,
        ids: torch.Tensor,
        local_positions: torch.Tensor,
        is_image: torch.Tensor | None = None,
        patch_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids, local_positions (B, L) int64; is_image (B, L) bool; patch_embeddings (…, dim),
        one per True of is_image, in row-major order of is_image (sequence by sequence)."""
        x = self.token(ids)
        if (is_image is None) != (patch_embeddings is None):
            raise ValueError("is_image and patch_embeddings go together: pass both or neither")
        if is_image is not None:
            slots, dim = int(is_image.sum()), x.shape[-1]
            if patch_embeddings.shape[-1] != dim or patch_embeddings[..., 0].numel() != slots:
                raise ValueError(
                    f"patch embeddings of shape {tuple(patch_embeddings.shape)} for {slots} image "
                    f"positions of is_image: allowed (…, {dim}) with {slots} vectors"
                )
            patches = patch_embeddings.reshape(slots, dim)
            x = x.masked_scatter(is_image[..., None], patches.to(x.dtype))
        return x + self.local(local_positions)
