"""backbone.dtype is honoured by every backbone (tiny ones included, RoPE buffers kept fp32 as from_pretrained keeps
them) or refused when two settings disagree; loading a run trained with flash_attention_2 where flash-attn cannot run
falls back to sdpa with a log line (issue 18 item 7)."""

import logging

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_train
from embed_lm.errors import ConfigError
from embed_lm.model.backbone import usable_attention


def test_backbone_dtype_is_honoured_by_a_tiny_backbone_and_buffers_stay_fp32():
    spec = instantiate(compose_train(["backbone=tiny_mistral", "backbone.dtype=bfloat16"]).backbone)
    model = spec.load().model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    buffers = dict(model.named_buffers())
    assert any("inv_freq" in n for n in buffers) and {b.dtype for b in buffers.values()} == {torch.float32}
    fp32 = instantiate(compose_train(["backbone=tiny_mistral"]).backbone).load().model  # auto on CPU: fp32
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    for (name, a), (_, b) in zip(model.named_parameters(), fp32.named_parameters()):  # the same init, rounded
        assert torch.equal(a, b.to(torch.bfloat16)), name


def test_disagreeing_dtypes_are_refused_naming_both():
    from embed_lm.config.validate import check_train

    with pytest.raises(ConfigError, match=r"backbone.dtype=float32 and backbone.tiny.dtype=bfloat16"):
        check_train(compose_train(["backbone=tiny_mistral", "data=sample", "backbone.dtype=float32",
                                   "backbone.tiny.dtype=bfloat16"]))  # before anything loads: exit 2, one line
    spec = instantiate(compose_train(["backbone=tiny_mistral", "backbone.tiny.dtype=bfloat16"]).backbone)
    assert spec.dtype == "bfloat16"  # tiny.dtype alone (backbone.dtype=auto) still works


def test_flash_attention_falls_back_to_sdpa_where_flash_attn_cannot_run(caplog):
    with caplog.at_level(logging.INFO, logger="embed_lm.model.backbone"):
        assert usable_attention("flash_attention_2", "cpu") == "sdpa"
    assert "flash_attention_2 (the run's) -> sdpa" in caplog.text
    assert usable_attention("eager", "cpu") == "eager"


def test_loading_a_flash_attention_config_on_cpu_loads_with_sdpa():
    from embed_lm.inference.runs import load_base

    cfg = compose_train(["backbone=tiny_mistral", "backbone.attn_implementation=flash_attention_2"])
    embedder = load_base(cfg, device="cpu")
    assert embedder.encoder.backbone.config._attn_implementation == "sdpa"
    assert embedder.encode(["a text"]).shape[0] == 1
