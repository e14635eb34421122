"""Run a project entry point as a user does: `python -m <module> <overrides>` from the repo root."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_module(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m *args` in a subprocess; with `check`, a failure shows its stdout and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result
