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


# `make test-fast` (pytest -m "not slow"): the unit tests of these modules, under 90 s on 2 cores; every other module
# (training runs, several processes, the demo, sweeps) and every test marked slow runs in `make test` only. A new
# module starts in the full tier; add it here when its tests take a second or two.
FAST_MODULES = {
    "test_backbone", "test_collator", "test_config", "test_data_readers", "test_dependencies", "test_docs_commands",
    "test_eval_batches", "test_infonce", "test_instructions", "test_length_batching", "test_passkey_generate",
    "test_passkey_variants", "test_plan", "test_plan_strategies", "test_pooling", "test_retrieval_metrics",
    "test_sampler", "test_synth_parsing", "test_synth_prompts",
}
SLOW_IN_FAST_MODULES = (  # module::test-name prefixes that train or start a process: over a few seconds each
    "test_config::test_cli_", "test_eval_batches::test_length_aware_eval_batches",
    "test_length_batching::test_training_logs", "test_length_batching::test_packing_gives",
    "test_length_batching::test_micro_batches_give", "test_passkey_variants::test_the_4k_window",
    "test_collator::test_encoder_output_does_not_depend",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module not in FAST_MODULES or f"{module}::{item.name}".startswith(SLOW_IN_FAST_MODULES):
            item.add_marker(pytest.mark.slow)
