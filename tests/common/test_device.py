import pytest
import torch

from common.device import (
    autocast,
    peak_memory_bytes,
    resolve_device,
    resolve_dtype,
    timer,
)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_resolve_dtype_and_autocast():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='fp8'"):
        resolve_dtype("fp8", cpu)
    x = torch.randn(4, 4)
    with autocast(cpu, torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(cpu, torch.float32):
        assert (x @ x).dtype == torch.float32


def test_timer_and_peak_memory_on_cpu():
    cpu = torch.device("cpu")
    with timer(cpu) as t:
        torch.randn(256, 256) @ torch.randn(256, 256)
    assert t["seconds"] > 0
    assert peak_memory_bytes(cpu) > 10 * 2**20  # a python process with torch loaded


def test_matmul_flops_per_s_is_a_plausible_rate():
    from common.device import matmul_flops_per_s

    rate = matmul_flops_per_s(torch.device("cpu"), size=256, repeats=3)
    assert 1e7 < rate < 1e14  # between a very slow core and a far faster-than-CPU chip
