"""A synthetic image-caption set, the stand-in for the paper's vision-language data (§3.2:
captioning datasets, trained on as image tokens followed by caption text).

Each image is 3 × 96 × 96 (the one patch grid of this package, 6 × 6 patches) with one or two
shapes — a circle, square or triangle, of a colour, a size and a place in a 3 × 3 layout — and
its caption names them in a fixed template, e.g. "a large red circle at the top left and a small
blue square at the bottom". A caption is a function of the image, so a model can learn it exactly
and a held-out set measures it.
"""

from __future__ import annotations

import numpy as np

SIZE = 96
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "white": (240, 240, 240),
}
SIZES = {"small": 9, "large": 15}  # half-widths in pixels
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")


def _place(row: int, col: int) -> str:
    if (row, col) == (1, 1):
        return "in the centre"
    if row == 1:
        return f"on the {COLUMNS[col]}"
    if col == 1:
        return f"at the {ROWS[row]}"
    return f"at the {ROWS[row]} {COLUMNS[col]}"


def _draw(image: np.ndarray, shape: str, colour: tuple, half: int, cy: int, cx: int) -> None:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    dy, dx = y - cy, x - cx
    if shape == "circle":
        inside = dy**2 + dx**2 <= half**2
    elif shape == "square":
        inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    else:  # an upright isosceles triangle in the square of side 2·half
        inside = (dy >= -half) & (dy <= half) & (np.abs(dx) * 2 <= (dy + half))
    image[:, inside] = np.asarray(colour, np.uint8)[:, None]


def caption_example(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One image (3, 96, 96) uint8 on a black background and its caption."""
    image = np.zeros((3, SIZE, SIZE), np.uint8)
    cells = rng.choice(9, size=rng.integers(1, 3), replace=False)
    parts = []
    for cell in cells:
        row, col = divmod(int(cell), 3)
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        _draw(image, shape, COLOURS[colour], SIZES[size], 16 + 32 * row, 16 + 32 * col)
        parts.append(f"a {size} {colour} {shape} {_place(row, col)}")
    return image, " and ".join(parts)


def caption_set(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`n` examples: images (n, 3, 96, 96) uint8 and their captions, fixed by `seed`."""
    if n < 1:
        raise ValueError(f"n={n} is not valid: a positive number of caption examples")
    rng = np.random.default_rng(seed)
    pairs = [caption_example(rng) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]
