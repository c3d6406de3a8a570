"""Short end-to-end fits through the real config and entry point (in-process train(cfg)) on tiny backbones."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose_train
from embed_lm.train import train

SMOKE = ["data=sample", "debug=smoke", "logger=csv"]


@pytest.mark.parametrize("backbone", ["tiny_mistral", "tiny_llama"])
def test_short_fit_writes_a_usable_run(backbone, tmp_path):
    cfg = compose_train([f"backbone={backbone}", *SMOKE], tmp_path)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0 and 0.0 <= metrics["test/recall@100"] <= 1.0
    adapter = tmp_path / "embedder" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it
    assert (tmp_path / "embedder" / "tokenizer" / "tokenizer.json").is_file()
    assert f"name: {backbone}" in (tmp_path / "embedder" / "config.yaml").read_text()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    csv = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "train/loss" in csv and "test/ndcg@10" in csv
    assert json.loads((tmp_path / "test_metrics.json").read_text())["after"]["test/ndcg@10"] == pytest.approx(
        metrics["test/ndcg@10"])


KNOBS = ["pooling=mean", "pooling=weighted_mean", "lora_rank=r8", "lora_rank=r32", "instruction_style=none",
         "instruction_style=task_prefix", "data=msmarco_only", "data=synthetic_msmarco", "backbone=tiny_llama"]


@pytest.mark.parametrize("knob", KNOBS)
def test_every_table4_knob_trains_on_a_tiny_backbone(knob, tmp_path, user_data_dir):
    overrides = ["backbone=tiny_mistral", *SMOKE, knob, f"paths.data_dir={user_data_dir}", "trainer.max_steps=2",
                 "test_after_training=false", "data.num_workers=0"]
    if knob.startswith("data="):  # the default data configs read <data_dir>/synthetic and <data_dir>/msmarco
        overrides += ["data.batch_size=8", "data.max_length=64"]
    cfg = compose_train(overrides, tmp_path)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    r = json.loads((tmp_path / "embedder" / "adapter" / "adapter_config.json").read_text())["r"]
    assert r == cfg.lora_rank.r


def test_validation_logs_retrieval_metrics_on_dev(tmp_path):
    cfg = compose_train(["backbone=tiny_mistral", *SMOKE, "test_after_training=false", "trainer.max_steps=-1",
                         "trainer.limit_train_batches=2"], tmp_path)
    metrics = train(cfg)
    assert {"val/ndcg@10", "val/mrr@10", "val/recall@100"} <= set(metrics)
