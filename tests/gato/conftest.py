"""A smoke-tier gato dataset shared by the gato tests (collected once per session)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from gato.collect import run as collect

CONF = str(Path(__file__).parents[2] / "gato" / "conf")


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gato_dataset")
    collect(compose_config("collect", ["experiment=smoke"]), out)
    return out
