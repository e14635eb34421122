import matplotlib.pyplot as plt
import numpy as np

from common.plotting import plot_curves, plot_heatmap


def test_plots_are_written_as_png(tmp_path):
    curves = {"a": np.random.rand(3, 10), "b": np.random.rand(5, 10)}
    path = plot_curves(curves, tmp_path / "curves.png", xlabel="t", ylabel="y")
    heat = plot_heatmap(np.eye(3), tmp_path / "heat.png", xlabels="xyz", ylabels="abc")
    for p in (path, heat):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_band_is_mean_plus_minus_the_sample_std_and_one_seed_has_none():
    fig, ax = plt.subplots()
    seeds = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, np.nan], [2.0, 5.0, np.nan]])
    plot_curves({"three seeds": seeds, "one seed": seeds[:1]}, "", ax=ax)
    band, single = ax.collections
    corners = {(x, round(y, 9)) for x, y in band.get_paths()[0].vertices}
    root3 = 3**0.5  # std(2, 2, 5; ddof = 1); std(1, 3, 2; ddof = 1) = 1
    assert corners == {
        (0.0, 1.0),
        (0.0, 3.0),
        (1.0, round(3 - root3, 9)),
        (1.0, round(3 + root3, 9)),
    }
    assert single.get_paths() == []  # one seed at x = 2 above, and for the whole "one seed" curve
    plt.close(fig)
