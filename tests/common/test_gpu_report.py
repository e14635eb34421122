"""bench.gpu_report: one command for every GPU table; on a CPU it says so and exits 0."""

import pytest
import torch

from bench import gpu_report
from tests.entry_points import run_module


def test_gpu_report_on_cpu_exits_0_with_its_message(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the report measures for real (make bench-gpu), too long here")
    result = run_module("bench.gpu_report", "--out", str(tmp_path))
    assert result.returncode == 0
    assert "CUDA is absent on this machine, so no kernel was measured" in result.stdout
    assert not list(tmp_path.iterdir())


def test_gpu_report_covers_every_kernel_benchmark():
    titles = [title for title, _ in gpu_report.sections(repeats=1)]
    assert titles[:3] == ["Attention", "Attention, GQA", "MoE"]
    assert [t for t in titles if t.startswith("Scan")] == [
        "Scan, B = 4, N = 64",
        "Scan, B = 8, N = 64",
        "Scan, B = 32, N = 64",
        "Scan, B = 16, N = 256",
    ]
