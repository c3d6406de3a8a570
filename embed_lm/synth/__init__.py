"""Synthetic training data written by an LLM, the paper's central idea (E5-mistral section 3.1, FACTS.md section 4).

    python -m embed_lm.synth generator=openai model=gpt-4o-mini n_tasks=100 n_examples=1000 out=data/synth/
    python -m embed_lm.synth generator=hf_local model=/models/Mistral-7B-Instruct-v0.3
    python -m embed_lm.synth model=gpt-4o-mini dry_run=true
    python -m embed_lm.synth.report data/synth/
    python -m embed_lm.train data.sources.synthetic.paths='data/synth/*.jsonl'

prompts.py    templates + seeded placeholder sampling -> Request
generators.py OpenAIGenerator (any OpenAI-compatible server), HFLocalGenerator (a local transformers model)
parsing.py    answer text -> task list / example fields, or a Discard reason
store.py      append-only output folder, which is also the resume state; exact-duplicate removal
pipeline.py   plan, bounded concurrency, progress bar, step 1 then step 2
summary.py    summary.json: counts, tokens, cost, run history
report.py     counts per kind and language, discard/duplicate rates, length histograms
"""
