"""Test-wide setup.

triton is imported first: importing it after EGL has been loaded (a MuJoCo / dm_control render)
segfaults the process. TRITON_INTERPRET=1 is set before any kernel module is imported, so
Triton kernels run on the CPU interpreter in tests.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import triton  # noqa: E402, F401
