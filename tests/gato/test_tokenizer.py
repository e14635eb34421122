"""Gato tokenisation (§2.1): mu-law and bins, discrete values, text, image patches, timesteps."""

import math

import pytest
import torch

from gato.tokenizer import (
    Continuous,
    Discrete,
    Image,
    Text,
    TextTokenizer,
    TokenRow,
    Vocab,
    detokenize_continuous,
    image_patches,
    mu_law_decode,
    mu_law_encode,
    offline_text,
    timestep_tokens,
    tokenize_continuous,
    tokenize_discrete,
    train_text_tokenizer,
)

V = Vocab(1024)  # the smallest text vocabulary that leaves discrete ids [0, 1024) inside text


def companded(x: float) -> float:
    """Eq. 1 by hand, μ = 100, M = 256."""
    return math.copysign(math.log(abs(x) * 100 + 1) / math.log(256 * 100 + 1), x)


def test_vocab_layout():
    vocab = Vocab(32000)
    assert vocab.text == range(0, 32000)
    assert vocab.discrete == range(0, 1024)
    assert vocab.continuous == range(32000, 33024)  # the paper's [32000, 33024)
    assert vocab.separator == 33024
    assert vocab.size == 33025
    with pytest.raises(ValueError, match="text_size=500"):
        Vocab(500)


def test_mu_law_matches_eq_1_on_hand_values():
    x = torch.tensor([0.0, 1.0, -1.0, 0.01, 10.0, -37.5, 256.0, -256.0], dtype=torch.float64)
    want = torch.tensor([companded(float(v)) if v else 0.0 for v in x], dtype=torch.float64)
    assert torch.allclose(mu_law_encode(x), want, atol=1e-12)
    assert mu_law_encode(x)[1] == pytest.approx(math.log(101) / math.log(25601))
    assert mu_law_encode(x)[-2:].tolist() == pytest.approx([1.0, -1.0])  # |x| = M maps to ±1
    assert torch.allclose(mu_law_decode(mu_law_encode(x)), x, atol=1e-9)


def test_continuous_round_trip_within_half_a_bin_in_companded_space():
    g = torch.Generator().manual_seed(0)
    magnitude = 10 ** (torch.rand(2000, generator=g, dtype=torch.float64) * 6 - 4)  # 1e-4 … 100
    x = magnitude * torch.where(torch.rand(2000, generator=g) < 0.5, -1.0, 1.0).double()
    ids = tokenize_continuous(x, V)
    assert ids.min() >= V.text_size and ids.max() < V.text_size + 1024
    back = detokenize_continuous(ids, V).double()
    error = (mu_law_encode(back) - mu_law_encode(x)).abs()
    assert error.max() <= 1 / 1024 + 1e-6  # half of a bin of width 2 / 1024
    assert error.max() > 0.4 / 1024  # the values are binned, not passed through
    raw = torch.rand(500, generator=g, dtype=torch.float64) * 2 - 1
    raw_back = detokenize_continuous(tokenize_continuous(raw, V, compand=False), V, compand=False)
    assert (raw_back.double() - raw).abs().max() <= 1 / 1024 + 1e-6


def test_bin_edges_clipping_and_offset():
    step = 2 / 1024
    values = [-1.0, -1 + step - 1e-9, -1 + step, 0.0, 1 - 1e-9, 1.0, -7.0, 7.0, -math.inf]
    bins = tokenize_continuous(values, V, compand=False) - V.text_size
    assert bins.tolist() == [0, 0, 1, 512, 1023, 1023, 0, 1023, 0]
    companded_bins = tokenize_continuous([-256.0, 256.0, -1e6, 1e6], V) - V.text_size
    assert companded_bins.tolist() == [0, 1023, 0, 1023]
    f = companded(0.1)  # 0.1 → F = 0.2362…, bin ⌊(F + 1) / 2 · 1024⌋ = 632
    assert math.floor((f + 1) / 2 * 1024) == 632
    assert tokenize_continuous([0.1], V).tolist() == [V.text_size + 632]
    paper = tokenize_continuous([-1e6, 1e6], Vocab(32000))
    assert paper.tolist() == [32000, 33023]
    with pytest.raises(ValueError, match="NaN"):
        tokenize_continuous([0.0, math.nan], V)


def test_continuous_flattens_row_major_and_decodes_bin_centres():
    grid = [[0.5, -0.5], [0.25, 1.0]]
    ids = tokenize_continuous(grid, V, compand=False)
    assert (ids - V.text_size).tolist() == [768, 256, 640, 1023]
    centres = detokenize_continuous(ids, V, compand=False)
    assert centres.tolist() == pytest.approx(
        [-1 + (2 * k + 1) / 1024 for k in (768, 256, 640, 1023)]
    )
    with pytest.raises(ValueError, match="id 5 is not a continuous-value id"):
        detokenize_continuous([V.text_size, 5], V)


def test_discrete_values():
    assert tokenize_discrete([[1, 2], [3, 1023]]).tolist() == [1, 2, 3, 1023]
    assert tokenize_discrete(torch.tensor([True, False])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="1024"):
        tokenize_discrete([0, 1024])
    with pytest.raises(ValueError, match="-3"):
        tokenize_discrete([-3])
    with pytest.raises(TypeError, match="float"):
        tokenize_discrete([0.5])


@pytest.fixture(scope="module")
def text_tokenizer() -> TextTokenizer:
    return train_text_tokenizer(offline_text(8000), vocab_size=1024)


def test_offline_text_is_bounded_prose():
    docs = offline_text(20000)
    assert sum(map(len, docs)) == 20000
    assert all(isinstance(d, str) and d for d in docs)
    assert "the" in " ".join(docs).split()
    assert sum(map(len, offline_text(10**6))) > 300_000  # pydoc topics are hundreds of KB
    with pytest.raises(ValueError, match="max_chars=0"):
        offline_text(0)


def test_text_round_trip(text_tokenizer, tmp_path):
    tok = text_tokenizer
    assert tok.vocab_size == 1024 and 0 <= tok.eot_id < 1024
    samples = [
        "Gato: 1.18B params, 604 tasks; 24 layers (width 2048)!",
        "x[i] = {'a': -3.5e-2, \"b\": 42}  # done?\n\ttabs & café — naïve 😀",
        "0123456789 +-*/%=<>()[]{}.,;:!?'\"`~@#$^&|\\",
    ]
    for s in samples:
        ids = tok.encode(s)
        assert all(0 <= i < 1024 for i in ids)
        assert tok.decode(ids) == s
    prose = "The assert statement is a convenient way to insert debugging assertions."
    assert len(tok.encode(prose)) < len(prose.encode()) / 2  # merges learned from the corpus
    tok.save(tmp_path / "tok.json")
    loaded = TextTokenizer.load(tmp_path / "tok.json")
    assert [loaded.encode(s) for s in samples] == [tok.encode(s) for s in samples]
    with pytest.raises(ValueError, match="id 1024 is not a text id"):
        tok.decode([1, 1024])


def test_text_tokenizer_errors():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_text_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size=5000"):
        train_text_tokenizer(["a tiny corpus"], vocab_size=5000)


def test_image_patches_raster_order_and_normalisation():
    rows, cols = 2, 3
    image = torch.zeros(2, 3, 32, 48, dtype=torch.uint8)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        for ch in range(3):  # patch k, channel ch holds k + 10 · ch
            image[:, ch, 16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)] = k + 10 * ch
    patches, grid = image_patches(image)
    assert patches.shape == (2, 6, 3, 16, 16) and patches.dtype == torch.float32
    assert grid == (2, 3)
    for k in range(6):
        for ch in range(3):
            want = ((k + 10 * ch) / 255 * 2 - 1) / 4
            assert torch.allclose(patches[:, k, ch], torch.full((2, 16, 16), want))


def test_image_patch_range_and_dtypes():
    extremes = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(128).view(1, 1, 16, 16)
    patches, _ = image_patches(extremes)
    assert patches.min().item() == -0.25 and patches.max().item() == 0.25  # [-1, 1] / √16
    image = torch.randint(0, 256, (1, 3, 16, 32), dtype=torch.uint8)
    as_uint8, _ = image_patches(image)
    as_float, _ = image_patches(image.float())
    assert torch.equal(as_uint8, as_float)
    assert as_uint8.abs().max() <= 0.25


def test_image_patch_errors():
    with pytest.raises(ValueError, match="20×32"):
        image_patches(torch.zeros(1, 3, 20, 32))
    with pytest.raises(ValueError, match="16×40"):
        image_patches(torch.zeros(1, 3, 16, 40))
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        image_patches(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="300"):
        image_patches(torch.full((1, 1, 16, 16), 300.0))


def mixed_timestep() -> TokenRow:
    observation = {  # keys in lexicographic order: buttons, camera, mission, proprio
        "proprio": Continuous([0.1, -256.0]),
        "mission": Text([5, 6, 7]),
        "camera": Image(num_patches=4),
        "buttons": Discrete([3]),
    }
    return timestep_tokens(observation, Continuous([0.5, -0.5], compand=False), V)


def test_timestep_ids_in_canonical_order():
    row = mixed_timestep()
    c = V.text_size
    #               buttons  camera      mission    proprio        '|'     actions
    assert row.ids.tolist() == [3, 0, 0, 0, 0, 5, 6, 7, c + 632, c + 0, 2048, c + 768, c + 256]
    assert row.ids[10] == V.separator
    assert row.is_image.tolist() == [False] + [True] * 4 + [False] * 8


def test_timestep_loss_mask_is_text_and_actions_only():
    row = mixed_timestep()
    want = [False] + [False] * 4 + [True] * 3 + [False, False] + [False] + [True, True]
    assert row.loss_mask.tolist() == want
    assert not (row.loss_mask & row.is_image).any()


def test_timestep_local_positions():
    row = mixed_timestep()
    # observation tokens are numbered 0 … 9; the separator and every action share index 512
    assert row.local_positions.tolist() == list(range(10)) + [512, 512, 512]
    small = timestep_tokens({"x": Discrete([1, 2])}, Discrete([4]), V, local_positions=8)
    assert small.local_positions.tolist() == [0, 1, 8, 8]
    episode = TokenRow.cat([row, small])
    assert len(episode) == 13 + 4
    assert episode.local_positions[13:].tolist() == [0, 1, 8, 8]  # restart every timestep
    assert episode.ids[13:].tolist() == [1, 2, V.separator, 4]


def test_timestep_errors():
    with pytest.raises(ValueError, match="observation of 9 tokens"):
        timestep_tokens({"x": Continuous([0.0] * 9)}, Discrete([0]), V, local_positions=8)
    with pytest.raises(TypeError, match="Image"):
        timestep_tokens({}, Image(2), V)
    with pytest.raises(TypeError, match="'x'.*list"):
        timestep_tokens({"x": [1, 2]}, Discrete([0]), V)
    with pytest.raises(ValueError, match="text id 1024"):
        timestep_tokens({"m": Text([1, 1024])}, Discrete([0]), V)
    with pytest.raises(ValueError, match="discrete value 2000"):
        timestep_tokens({}, Discrete([2000]), V)
