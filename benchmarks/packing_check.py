"""Packed (padding-free) vs padded: embeddings and LoRA gradients of one InfoNCE step must agree. For the GPU check
(FlashAttention-2 varlen has no CPU kernel, and flex_attention has no CPU backward), e.g. from benchmarks/gpu_check.py:

    python benchmarks/packing_check.py --attn flash_attention_2 --device cuda --dtype bfloat16   # needs flash-attn
    python benchmarks/packing_check.py --attn sdpa                                               # CPU, seconds

    from benchmarks.packing_check import check_packing
    r = check_packing("flash_attention_2", "cuda", torch.bfloat16); assert r["ok"], r

Tiny random-init Mistral (sliding window) and LLaMA with LoRA r8 (the repo's tokenizer, no download), texts of
varied length from the bundled sample, right and left padding, last-token and mean pooling. Tolerances: fp32
1e-5 (embeddings) / 1e-4 relative to each gradient tensor's largest entry; bf16 2e-2 / 5e-2 (FlashAttention and
sdpa round differently). A backbone that mixed texts would be off by O(1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _step(encoder, data, device, dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from embed_lm.training.losses.infonce import InfoNCELoss

    encoder.zero_grad(set_to_none=True)
    q, d = (encoder(data[k].to(device)) for k in ("queries", "documents"))  # (B, D), (2B, D)
    B = q.size(0)
    InfoNCELoss(0.02)(q, d[:B], d[B:]).backward()
    grads = {n: p.grad.float().cpu() for n, p in encoder.named_parameters() if p.requires_grad}
    return torch.cat([q, d]).detach().float().cpu(), grads


def check_packing(attn_implementation: str = "sdpa", device: str = "cpu", dtype: torch.dtype = torch.float32,
                  n: int = 8) -> dict:
    """Max embedding difference and max relative gradient difference, packed vs padded, per case; "ok" overall."""
    import json as _json

    from embed_lm.data.datamodule import PairCollator
    from embed_lm.data.records import TrainExample
    from embed_lm.model.backbone import TinyBackbone, add_lora
    from embed_lm.model.collator import TextCollator
    from embed_lm.model.encoder import TextEncoder
    from embed_lm.model.instructions import NaturalInstruction
    from embed_lm.model.pooling import Pooling

    rows = [_json.loads(x) for x in (ROOT / "data/sample/train/synthetic/short_long.jsonl").open()][:n]
    cut = lambda text, k: " ".join(text.split()[:k])  # noqa: E731
    exs = [TrainExample(cut(r["user_query"], 3 + i), cut(r["positive_document"], 5 + 9 * i % 60),
                        (cut(r["hard_negative_document"], 60 - 5 * i),), r["task"], "short-long")
           for i, r in enumerate(rows)]
    tol_emb, tol_grad = (1e-5, 1e-4) if dtype == torch.float32 else (2e-2, 5e-2)
    cases = {}
    for architecture, pooling, side in (("mistral", "last_token", "left"), ("llama", "mean", "right")):
        backbone = TinyBackbone(f"tiny_{architecture}", architecture, attn_implementation=attn_implementation)
        loaded = backbone.load()
        data = PairCollator(TextCollator(loaded.tokenizer, 96, True, side), NaturalInstruction())(exs)
        results = []
        for packing in (False, True):
            model = TinyBackbone(f"tiny_{architecture}", architecture,
                                 attn_implementation=attn_implementation).load().model.to(device, dtype)
            torch.manual_seed(0)
            model = add_lora(model, 8, 16, 0.0, loaded.lora_target_modules)
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.data = p.data.float()  # LoRA in fp32, as add_lora does on real runs
                    if "lora_B" in name:
                        torch.nn.init.normal_(p, std=0.05)
            encoder = TextEncoder(model, Pooling(pooling), packing=packing).train()
            results.append(_step(encoder, data, device, dtype))
        (e0, g0), (e1, g1) = results
        grad = max(((g1[k] - g0[k]).abs().max() / g0[k].abs().max().clamp(min=1e-12)).item() for k in g0)
        cases[f"{architecture}-{pooling}-{side}"] = {"max_embedding_diff": (e1 - e0).abs().max().item(),
                                                     "max_relative_grad_diff": grad}
    ok = all(c["max_embedding_diff"] < tol_emb and c["max_relative_grad_diff"] < tol_grad for c in cases.values())
    return {"attn_implementation": attn_implementation, "device": device, "dtype": str(dtype), "cases": cases,
            "tolerances": {"embedding": tol_emb, "relative_grad": tol_grad}, "ok": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    result = check_packing(args.attn, args.device, getattr(torch, args.dtype))
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
