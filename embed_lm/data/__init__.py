"""Training and evaluation data: readers for the paper's synthetic JSONL and MS-MARCO formats, BEIR-layout eval
splits, a single-source mixture batch sampler and the LightningDataModule that ties them together."""
