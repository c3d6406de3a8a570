"""The paper's Table 4 hyperparameter study: the report built from a sweep folder (`python -m embed_lm.report`)."""
