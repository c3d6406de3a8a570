"""Evaluation-time variants of a loaded decoder (paper Figure 5): RoPE base and sliding window, no retraining.

    apply_variant(embedder.encoder.backbone, rope_base=1e5, sliding_window=32768)  # PEFT-wrapped or not
    python -m embed_lm.passkey passkey_rope_base=base1e5 passkey_sliding_window=window32k

rope_base: sets config.rope_parameters["rope_theta"] (where transformers 5.x keeps the base; it reads no
config.rope_theta) and rebuilds every rotary-embedding module from the updated config, so its inv_freq, the
1 / base^(2i/d) the cos/sin tables come from, changes too (updating the config alone would not: the module reads
the base only when it is built).
sliding_window: sets config.sliding_window, which Mistral reads at every forward to build the mask (token i
attends to tokens i-w+1 .. i); None = full causal attention. Models without a sliding window (LLaMA) accept only
None; a window is refused with the option that works.
"""

from __future__ import annotations

from torch import nn

from embed_lm.errors import UserError

SLIDING_WINDOW_MODELS = ("mistral", "mixtral")  # model types whose attention reads config.sliding_window


class VariantError(UserError, ValueError):
    """The variant cannot apply to this model."""


def base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def rotary_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) for every rotary-embedding module."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if hasattr(child, "inv_freq") and hasattr(child, "rope_type")]


def set_rope_base(model: nn.Module, rope_base: float) -> None:
    model = base_model(model)
    config = model.config
    found = rotary_modules(model)
    if not found or not isinstance(getattr(config, "rope_parameters", None), dict):
        raise VariantError(f"passkey rope_base: {type(model).__name__} has no rotary embedding with "
                         "config.rope_parameters (a RoPE decoder such as Mistral or LLaMA is needed)")
    config.rope_parameters["rope_theta"] = float(rope_base)
    for parent, name, old in found:
        own = getattr(old, "config", config)  # the same object as config for Mistral and LLaMA
        own.rope_parameters["rope_theta"] = float(rope_base)
        setattr(parent, name, type(old)(config=own).to(old.inv_freq.device))


def set_sliding_window(model: nn.Module, sliding_window: int | None) -> None:
    config = base_model(model).config
    kind = getattr(config, "model_type", type(config).__name__)
    if kind in SLIDING_WINDOW_MODELS:
        config.sliding_window = None if sliding_window is None else int(sliding_window)
    elif sliding_window is not None or getattr(config, "sliding_window", None) is not None:
        raise VariantError(f"passkey sliding_window={sliding_window}: '{kind}' models have no sliding window this "
                         f"code can set (only {', '.join(SLIDING_WINDOW_MODELS)}); "
                         "use passkey_sliding_window=none (full attention)")


def apply_variant(model: nn.Module, rope_base: float, sliding_window: int | None) -> None:
    """Both settings, absolutely (applying a variant twice, or another one after it, needs no reload)."""
    set_sliding_window(model, sliding_window)  # checked first: a refused window leaves the model untouched
    set_rope_base(model, rope_base)


def variant_of(model: nn.Module) -> dict:
    """The settings in force: {"rope_base": float, "sliding_window": int | None}."""
    config = base_model(model).config
    return {"rope_base": float(config.rope_parameters["rope_theta"]),
            "sliding_window": getattr(config, "sliding_window", None)}
