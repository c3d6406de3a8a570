"""LoRA on all seven projections of the real 7B configs, built on the meta device (no weights, no download)."""

import pytest
import torch
from transformers import AutoModel, LlamaConfig, MistralConfig

from embed_lm.model.backbone import TinyBackbone, add_lora, count_trainable

MISTRAL_7B = MistralConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                           intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768,
                           sliding_window=4096)
LLAMA2_7B = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                        intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)


def lora_count(config, r):
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return count_trainable(add_lora(model, r, 32, 0.1, TinyBackbone.LORA_TARGETS))


@pytest.mark.parametrize("r,expected", [(8, 20_971_520), (16, 41_943_040), (32, 83_886_080)])
def test_mistral_7b_counts_match_the_paper(r, expected):
    assert lora_count(MISTRAL_7B, r) == expected


def test_llama2_7b_count():
    # per layer: q,k,v,o r*(4096+4096) each + gate,up,down r*(4096+11008) each; 32 layers
    assert lora_count(LLAMA2_7B, 16) == 32 * 16 * (4 * 8192 + 3 * 15104) == 39_976_960


def test_only_lora_weights_train(tiny_mistral):
    import copy

    model = add_lora(copy.deepcopy(tiny_mistral.model), 8, 16, 0.0, tiny_mistral.lora_target_modules)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == set(TinyBackbone.LORA_TARGETS)  # ...q_proj.lora_A.default.weight
