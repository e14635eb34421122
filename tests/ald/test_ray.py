"""runtime=ray: the same actors as Ray actors on a local Ray instance (ray.init(num_cpus=2)).
Skipped where Ray is not installed (it is the optional extra `pip install -e .[ray]`)."""

import importlib.util
import json

import pytest

from tests.entry_points import run_module

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (optional: pip install -e .[ray]); runtime=ray not tested",
)


def test_ray_runtime_smoke(tmp_path):
    run_module(
        "ald.train",
        "experiment=smoke",
        "runtime=ray",
        "runtime.num_actors=2",
        "total_steps=512",
        f"hydra.run.dir={tmp_path}",
    )
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "update" in r]
    assert records[-1]["update"] == 16 and records[-1]["step"] == 512
