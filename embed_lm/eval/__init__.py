"""Evaluation through the `mteb` library: our encoder as an mteb model, the paper's task instructions, offline
local tasks built from the bundled sample, BEIR folders as retrieval tasks, and MTEB-style score aggregation."""
