"""Synthetic training data written by an LLM, the paper's central idea (E5-mistral section 3.1, FACTS.md section 4).

    python -m embed_lm.synth generator=openai model=gpt-4o-mini n_tasks=100 n_examples=1000 out=data/synth/
    python -m embed_lm.synth generator=openai_batch model=gpt-4o-mini n_examples=500000       # Batch API
    python -m embed_lm.synth generator=vllm model=/models/Qwen2.5-7B-Instruct                  # offline engine, GPU
    python -m embed_lm.synth generator=hf_local model=/models/Mistral-7B-Instruct-v0.3
    python -m embed_lm.synth model=gpt-4o-mini dry_run=true
    python -m embed_lm.synth.report data/synth/
    python -m embed_lm.train data.sources.synthetic.paths='data/synth/*.jsonl'

prompts.py      templates, topic seeds + seeded placeholder sampling -> Request
schemas.py      the answers' JSON schemas (pydantic), sent as response_format
generators.py   OpenAIGenerator (async, any OpenAI-compatible server), HFLocalGenerator (batched transformers)
batch.py        OpenAIBatchGenerator: the Batch API, resumable by batch id
vllm_engine.py  VLLMGenerator: vLLM's offline engine (optional dependency)
ratelimit.py    requests / tokens per minute and Retry-After pauses
execute.py      bounded-concurrency asyncio runner, chunked runner for local engines, run statistics
parsing.py      answer text -> task list / example fields, or a Discard reason
dedup.py        near-duplicate task definitions (MinHash LSH over content words)
store.py        append-only output folder, which is also the resume state; exact-duplicate removal
pipeline.py     plan, step 1, near-dup removal, step 2, through the generator's own path
summary.py      summary.json: counts, discard rates, tokens, cost, failures, run history
report.py       counts per kind and language, rates, length/token histograms, samples.md
report_tasks.py distinct tasks, near-duplicate rate, clusters and 2-D map of task embeddings
"""
