"""embed_lm: train text embedders from LLMs with the E5-mistral recipe (LoRA + InfoNCE), Hydra + Lightning.

    python -m embed_lm.train                      # the paper's defaults (Mistral-7B, last-token, r16, natural)
    python -m embed_lm.train experiment=demo      # all-MiniLM-L6-v2 on the bundled sample data, CPU, minutes

    import embed_lm                               # light: torch loads on first use of load()
    m = embed_lm.load("outputs/train/runs/<run>") # run folder, export folder or .ckpt (embed_lm/inference/api.py)
    scores = m.similarity(m.encode_queries(["how do cats purr"], task="..."), m.encode_documents(passages))

Dimension names used in shape comments throughout: B batch (queries), N hard negatives per query, M documents
in a batch (B * (1 + N)), W world size, D hidden size, L tokens, Q queries, C corpus documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["EmbeddingModel", "load"]

if TYPE_CHECKING:
    from embed_lm.inference.api import EmbeddingModel, load


def __getattr__(name: str):
    """Lazy: `import embed_lm` stays light; embed_lm.load / EmbeddingModel import torch on first use."""
    if name in __all__:
        from embed_lm.inference import api

        return getattr(api, name)
    raise AttributeError(f"module 'embed_lm' has no attribute {name!r}")
