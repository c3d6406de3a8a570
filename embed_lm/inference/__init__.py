"""Loading trained runs and encoding with them: the Python API (`embed_lm.load`), run folders, batched encoding,
the sentence-transformers export format, model cards and hard-negative mining."""
