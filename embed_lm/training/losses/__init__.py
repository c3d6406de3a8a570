"""Contrastive losses: pure functions of embeddings (one per file); they never own the model."""
