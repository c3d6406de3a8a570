"""Every option of every config group composes and resolves; the user's own commands work as written."""

import subprocess
import sys

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, ROOT, compose_train

GROUPS = ["backbone", "pooling", "lora_rank", "instruction_style", "data", "loss", "trainer", "logger",
          "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def resolved(cfg):
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], tmp_path)
    assert HydraConfig.get().runtime.choices[group] == option
    resolved(cfg)
    # the cheap objects instantiate without touching weights or data
    assert callable(instantiate(cfg.pooling)) and callable(instantiate(cfg.loss))
    instantiate(cfg.instruction_style).query_prefix("task", "short-long")
    spec = instantiate(cfg.backbone)
    assert spec.name == cfg.backbone.name and spec.lora_target_modules


def test_every_group_has_its_options():
    names = {g: {o for gg, o in OPTIONS if gg == g} for g in GROUPS}
    assert names["backbone"] >= {"mistral", "llama2", "minilm", "tiny_mistral", "tiny_llama"}
    assert names["pooling"] == {"last_token", "mean", "weighted_mean"}
    assert names["lora_rank"] == {"r8", "r16", "r32", "full"}
    assert names["instruction_style"] == {"natural", "none", "task_prefix"}
    assert names["data"] >= {"synthetic_msmarco", "msmarco_only", "sample"}
    assert names["logger"] >= {"wandb", "csv", "none"}
    assert "demo" in names["experiment"]


def test_defaults_are_the_papers(tmp_path):
    cfg = compose_train([], tmp_path)
    choices = HydraConfig.get().runtime.choices
    assert (choices.backbone, choices.pooling, choices.lora_rank, choices.instruction_style, choices.data) == (
        "mistral", "last_token", "r16", "natural", "synthetic_msmarco")
    assert cfg.backbone.model_name_or_path == "mistralai/Mistral-7B-v0.1" and cfg.backbone.append_eos
    assert cfg.loss.temperature == 0.02 and cfg.data.negatives_per_query == 1 and cfg.data.max_length == 512
    assert (cfg.optimizer.lr, cfg.optimizer.warmup_steps, cfg.optimizer.weight_decay) == (1e-4, 100, 0.1)
    assert cfg.gradient_checkpointing is True and cfg.trainer.max_epochs == 1
    assert resolved(cfg)["run_name"] == "mistral-last_token-r16-natural-synthetic_msmarco"


def test_table4_knobs_are_plain_overrides(tmp_path):
    cfg = compose_train(["backbone=llama2", "pooling=mean", "lora_rank=r8", "instruction_style=task_prefix",
                         "data=msmarco_only"], tmp_path)
    assert cfg.backbone.model_name_or_path == "meta-llama/Llama-2-7b-hf"
    assert cfg.pooling.name == "mean" and cfg.lora_rank.r == 8 and list(cfg.data.sources) == ["msmarco"]
    assert instantiate(cfg.instruction_style).query_prefix("t", "long-short") == "classify: "


def test_yaml_files_start_with_the_command_that_uses_them():
    for path in CONF.rglob("*.yaml"):
        head = path.read_text().splitlines()[:2]
        assert any(line.startswith(("# run: python -m embed_lm.", "# run: make ")) for line in head), path


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "embed_lm.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_prints_the_resolved_config_for_the_users_command():
    out = run_cli("backbone=llama2", "pooling=mean", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "meta-llama/Llama-2-7b-hf" in out.stdout and "name: mean" in out.stdout


def test_cli_missing_mistral_says_what_was_tried_and_how_to_fix(tmp_path):
    out = run_cli(f"paths.log_dir={tmp_path}")
    assert out.returncode == 2
    assert "mistralai/Mistral-7B-v0.1" in out.stderr and "backbone.model_name_or_path=" in out.stderr
    assert "Hugging Face cache" in out.stderr and "Traceback" not in out.stderr
