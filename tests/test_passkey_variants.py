"""Passkey variants (embed_lm/passkey/variants.py): each conf option reaches the model's config, its rotary
embedding or attention mask, and the computed embedding; PEFT-wrapped models too; LLaMA refuses a window."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from embed_lm.model.backbone import TinyBackbone, add_lora
from embed_lm.model.collator import TextCollator
from embed_lm.model.encoder import TextEncoder
from embed_lm.passkey.generate import generate_task
from embed_lm.passkey.variants import VariantError, apply_variant, rotary_modules, variant_of
from embed_lm.model.pooling import Pooling

CONF = Path(__file__).resolve().parents[1] / "conf"
ROPE = {p.stem: OmegaConf.load(p).rope_base for p in sorted((CONF / "passkey_rope_base").glob("*.yaml"))}
WINDOW = {p.stem: OmegaConf.load(p).sliding_window for p in sorted((CONF / "passkey_sliding_window").glob("*.yaml"))}


def test_the_options_are_the_papers():
    assert ROPE == {"base1e4": 1e4, "base1e5": 1e5, "base1e6": 1e6}
    assert WINDOW == {"window4k": 4096, "window32k": 32768, "none": None}


def embed(backbone, model, text: str) -> torch.Tensor:
    batch = TextCollator(backbone.tokenizer, 8192, append_eos=True)([""], [text])
    with torch.inference_mode():
        return TextEncoder(model, Pooling("last_token")).eval()(batch)  # (1, D)


@pytest.fixture(scope="module")
def doc(tiny_mistral):
    return generate_task(tiny_mistral.tokenizer, 160, n_queries=1, n_candidates=1).docs[0].text


@pytest.mark.parametrize("option", list(ROPE))
def test_each_rope_base_changes_config_inv_freq_and_embedding(option, doc):
    backbone = TinyBackbone("tiny_mistral", "mistral", rope_theta=5000.0).load()  # a base none of the options has
    before = embed(backbone, backbone.model, doc)
    apply_variant(backbone.model, ROPE[option], 4096)
    base = ROPE[option]
    assert backbone.model.config.rope_parameters["rope_theta"] == base == variant_of(backbone.model)["rope_base"]
    (_, _, rotary), = rotary_modules(backbone.model)
    dim = backbone.model.config.hidden_size // backbone.model.config.num_attention_heads
    expected = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    torch.testing.assert_close(rotary.inv_freq, expected)
    assert not torch.allclose(embed(backbone, backbone.model, doc), before, atol=1e-6)


def test_back_to_the_native_base_gives_the_native_embedding(tiny_mistral, doc):
    backbone = TinyBackbone("tiny_mistral", "mistral").load()
    native = embed(backbone, backbone.model, doc)
    apply_variant(backbone.model, 1e5, 32768)
    apply_variant(backbone.model, 1e4, 4096)
    torch.testing.assert_close(embed(backbone, backbone.model, doc), native, rtol=0, atol=1e-6)


@pytest.mark.parametrize("option", list(WINDOW))
def test_each_sliding_window_changes_config_and_embedding(option, doc):
    backbone = TinyBackbone("tiny_mistral", "mistral", sliding_window=32).load()  # a window shorter than the doc
    before = embed(backbone, backbone.model, doc)
    apply_variant(backbone.model, 1e4, WINDOW[option])
    assert backbone.model.config.sliding_window == WINDOW[option] == variant_of(backbone.model)["sliding_window"]
    assert not torch.allclose(embed(backbone, backbone.model, doc), before, atol=1e-6)


def test_the_4k_window_really_masks_past_4096_tokens(tiny_mistral):
    """Past 4096 tokens window4k and window32k differ; at that length 32k and none (full attention) agree."""
    backbone = TinyBackbone("tiny_mistral", "mistral").load()
    long_doc = generate_task(backbone.tokenizer, 4160, n_queries=1, n_candidates=1).docs[0].text
    out = {}
    for option in ("window4k", "window32k", "none"):
        apply_variant(backbone.model, 1e4, WINDOW[option])
        out[option] = embed(backbone, backbone.model, long_doc)
    assert not torch.allclose(out["window4k"], out["window32k"], atol=1e-6)
    torch.testing.assert_close(out["window32k"], out["none"])


def test_a_peft_wrapped_model_takes_the_variant(doc):
    backbone = TinyBackbone("tiny_mistral", "mistral", sliding_window=32).load()
    model = add_lora(backbone.model, r=4, alpha=8, dropout=0.0, target_modules=backbone.lora_target_modules)
    before = embed(backbone, model, doc)
    apply_variant(model, 1e5, None)
    config = model.get_base_model().config
    assert config.rope_parameters["rope_theta"] == 1e5 and config.sliding_window is None
    assert not torch.allclose(embed(backbone, model, doc), before, atol=1e-6)


def test_llama_takes_a_rope_base_but_refuses_a_window(doc):
    backbone = TinyBackbone("tiny_llama", "llama").load()
    before = embed(backbone, backbone.model, doc)
    with pytest.raises(VariantError, match="passkey_sliding_window=none"):
        apply_variant(backbone.model, 1e5, 4096)
    assert backbone.model.config.rope_parameters["rope_theta"] == 1e4  # a refused variant changes nothing
    apply_variant(backbone.model, 1e5, None)
    assert not torch.allclose(embed(backbone, backbone.model, doc), before, atol=1e-6)
