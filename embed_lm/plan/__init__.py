"""Memory and step-time planning for a training config (python -m embed_lm.plan)."""
