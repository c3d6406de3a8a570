"""Model layer: backbones + LoRA, tokenisation (collator), instructions, pooling and the text encoder."""
