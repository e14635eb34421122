import numpy as np

from common.plotting import plot_curves, plot_heatmap


def test_plots_are_written_as_png(tmp_path):
    curves = {"a": np.random.rand(3, 10), "b": np.random.rand(5, 10)}
    path = plot_curves(curves, tmp_path / "curves.png", xlabel="t", ylabel="y")
    heat = plot_heatmap(np.eye(3), tmp_path / "heat.png", xlabels="xyz", ylabels="abc")
    for p in (path, heat):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
