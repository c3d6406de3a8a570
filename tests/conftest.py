"""Shared fixtures: offline environment, the real Hydra config composed in-process, tiny backbones, data dirs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from embed_lm.config import resolvers as conf_resolvers  # noqa: E402
from embed_lm.model.backbone import TinyBackbone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SAMPLE = ROOT / "data" / "sample"
conf_resolvers.register()
torch.set_num_threads(2)


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose conf/<config_name>.yaml as `python -m embed_lm.<entry> <overrides>` would, Hydra runtime set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml as `python -m embed_lm.train <overrides>` would, with the Hydra runtime set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as under @hydra.main: the job config, with HydraConfig.get() for the runtime
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def compose_cfg():
    return compose_train


@pytest.fixture(scope="session")
def tiny_mistral():
    return TinyBackbone("tiny_mistral", "mistral").load()


@pytest.fixture(scope="session")
def user_data_dir() -> Path:
    """The sample's train/ folder is laid out as the default data configs expect (<data_dir>/synthetic,
    <data_dir>/msmarco), so data=synthetic_msmarco and data=msmarco_only run on it as users would run them."""
    return SAMPLE / "train"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-step training run of tiny_mistral on the sample data (run folder with embedder/, checkpoints/)."""
    from embed_lm.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    train(compose_train(["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=none",
                         "trainer.max_steps=2", "test_after_training=false"], run))
    return run
