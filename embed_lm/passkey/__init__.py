"""Personalized passkey retrieval (paper section 5.2, Figures 4-5): can the embedding of a long document still
tell whose pass key it holds? Top-1 accuracy among 100 candidates per context length, under evaluation-time RoPE
base / sliding-window variants.

    python -m embed_lm.passkey run=<training run>          # conf/passkey.yaml; see __main__.py for more
    python -m embed_lm.passkey.plot outputs/passkey/<name>  # the combined Figure 5 plot

generate.py (task, length fitting), cache.py (task jsonl files), variants.py (RoPE base, sliding window),
evaluate.py (encode + top-1), results.py (the resumable CSV), plot.py, __main__.py (the Hydra entry point).
"""
