"""Model shapes for planning without weights: the config's own numbers (tiny backbones), a local or cached
config.json, or the published shapes of the paper's two backbones."""

from __future__ import annotations

from embed_lm.errors import ConfigError
from embed_lm.plan.estimate import Shape

KNOWN = {  # published configs (config.json of each hub repo)
    "mistralai/Mistral-7B-v0.1": Shape(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, vocab=32000),
    "meta-llama/Llama-2-7b-hf": Shape(layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000),
}


def shape_of(backbone_cfg) -> Shape:
    if backbone_cfg.get("size") == "tiny":
        t = backbone_cfg.tiny
        return Shape(t.num_hidden_layers, t.hidden_size, t.intermediate_size, t.num_attention_heads,
                     t.num_key_value_heads, 4096)
    name = backbone_cfg.model_name_or_path
    try:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(name, local_files_only=True)
        return Shape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                     getattr(c, "num_key_value_heads", c.num_attention_heads), c.vocab_size)
    except (OSError, ValueError, AttributeError):
        if name in KNOWN:
            return KNOWN[name]
        raise ConfigError(f"no config for backbone {name!r}: not cached, not a local directory, not one of "
                         f"{sorted(KNOWN)}; point backbone.model_name_or_path at a model folder") from None
