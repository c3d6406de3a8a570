"""embed_lm: train text embedders from LLMs with the E5-mistral recipe (LoRA + InfoNCE), Hydra + Lightning.

    python -m embed_lm.train                      # the paper's defaults (Mistral-7B, last-token, r16, natural)
    python -m embed_lm.train experiment=demo      # all-MiniLM-L6-v2 on the bundled sample data, CPU, minutes

Dimension names used in shape comments throughout: B batch (queries), N hard negatives per query, M documents
in a batch (B * (1 + N)), W world size, D hidden size, L tokens, Q queries, C corpus documents.
"""

__version__ = "0.1.0"
