"""The planner: parameter counts against real models, its activation formula against a fresh measurement on a
shape it was not fitted on, and the CLI's suggestion."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import compose_config
from embed_lm.model.backbone import TinyBackbone, add_lora
from embed_lm.plan.__main__ import plan
from embed_lm.plan.activations import saved_activation_bytes
from embed_lm.plan.estimate import Shape, largest_chunk, plan_step, saved_bytes_per_token
from embed_lm.plan.shapes import KNOWN


def model_of(shape: Shape, arch="mistral", device="cpu"):
    cfg = AutoConfig.for_model(arch, vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                               num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                               num_key_value_heads=shape.kv_heads, max_position_embeddings=4096)
    with torch.device(device):
        return AutoModel.from_config(cfg, attn_implementation="sdpa")


@pytest.mark.parametrize("name,arch", [("mistralai/Mistral-7B-v0.1", "mistral"), ("meta-llama/Llama-2-7b-hf", "llama")])
def test_parameter_counts_match_the_real_architectures(name, arch):
    shape = KNOWN[name]
    model = model_of(shape, arch, device="meta")
    assert shape.params() == sum(p.numel() for p in model.parameters())
    lora = add_lora(model, 16, 32, 0.0, TinyBackbone.LORA_TARGETS)
    assert shape.lora_params(16) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_activation_formula_matches_a_measurement_on_an_unseen_shape(arch, checkpointing):
    shape = Shape(layers=3, hidden=192, ffn=448, heads=6, kv_heads=2 if arch == "mistral" else 6, vocab=512)
    model = add_lora(model_of(shape, arch), 8, 16, 0.0, TinyBackbone.LORA_TARGETS, checkpointing).train()
    S, T = 3, 40
    measured = saved_activation_bytes(model, torch.randint(0, 512, (S, T)), torch.ones(S, T, dtype=torch.long))
    predicted = S * T * saved_bytes_per_token(shape, 4, checkpointing)
    assert predicted == pytest.approx(measured, rel=0.05)


def test_cached_loss_memory_follows_the_chunk_not_the_batch():
    shape = KNOWN["mistralai/Mistral-7B-v0.1"]
    small = plan_step(shape, 16, 2048, 1, 512, 1, 32, True)
    assert plan_step(shape, 16, 256, 1, 512, 1, 32, True).activations_gb == pytest.approx(small.activations_gb,
                                                                                          rel=0.05)  # logits differ
    plain = plan_step(shape, 16, 2048, 1, 512, 1, None, True)
    assert plain.activations_gb > 20 * small.activations_gb
    assert largest_chunk(shape, 16, 2048, 1, 512, 1, True, 80) > largest_chunk(shape, 16, 2048, 1, 512, 1, True, 40)
    assert largest_chunk(shape, 16, 2048, 1, 512, 1, True, 10) == 0  # 7B bf16 weights alone exceed 9 GB


def test_cli_plans_the_papers_batch_on_one_gpu(capsys):
    cfg = compose_config("plan", ["backbone=mistral", "trainer.devices=1", "data.batch_size=2048",
                                  "loss=cached_infonce", "loss.mini_batch_size=32"])
    result = plan(cfg)
    out = capsys.readouterr().out
    assert "41,943,040 trainable" in out and "2048 global" in out
    assert result["plan"].total_gb < 80 and result["largest_chunk"] >= 32
