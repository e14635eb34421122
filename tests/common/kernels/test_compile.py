"""The kernels compile for GPUs that are not here (sm_86, sm_90) with the launch table's configs,
within each device's shared memory: `triton.compile` ahead of time, in a subprocess without
TRITON_INTERPRET (the test session interprets kernels, so they are not compilable in it)."""

import os
import subprocess
import sys

from tests.entry_points import ROOT

CHECK = """
import torch
import common.kernels.attention.triton as attention
from bench.kernel_compile import attention_shared_bytes, scan_shared_bytes
for arch in (86, 90):
    limit = attention.shared_memory_limit(capability=(arch // 10, arch % 10))
    for backward in (False, True):
        config = attention.launch_config(128, torch.float16, backward, limit)
        used = attention_shared_bytes(arch, torch.float16, 128, backward, config)
        assert 0 < used <= limit, (arch, backward, config, used, limit)
        print(arch, backward, used, limit)
forward, backward = scan_shared_bytes(90, "fp32", True, aggregate=False, carry=True)
assert 0 < forward <= 227 * 1024 and 0 < backward <= 227 * 1024
print("scan", forward, backward)
"""


def test_attention_and_scan_compile_for_sm86_and_sm90_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\n") == 5
