"""One-command GPU check at the paper's shapes, each figure next to what `python -m embed_lm.plan` predicted.

    make gpu-check                                              # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --model /models/Mistral-7B-v0.1 --out gpu_check.json   # real weights
    python benchmarks/gpu_check.py --tiny --fsdp-procs 2        # CPU, tiny_mistral shapes, seconds (the test)

Mistral-7B architecture (random init from MistralConfig unless --model), bf16 frozen weights, sdpa attention, LoRA
r16 on all seven projections (embed_lm.model.backbone.add_lora), gradient checkpointing, 512-token sequences of
random ids (queries, positives, one hard negative each: 3 sequences per query), AdamW step included.
Sections (one table, and JSON with the same rows):
  plain/search   plain InfoNCE: per-GPU batch doubled until it runs out of memory (or --max-batch)
  plain          plain InfoNCE at the largest batch that fitted (that trial's step)
  cached         cached InfoNCE (GradCache, embed_lm/training/losses/cached_infonce.py) at --cached-batch (2048)
                 queries on one GPU, chunks of --chunk
  fsdp           FSDP FULL_SHARD over all visible GPUs (benchmarks/gpu_check_fsdp.py), skipped on one GPU
  passkey/<v>    one 32k-token document per passkey variant (conf/passkey_variant/), forward only
MFU = model FLOPs (forward + backward of every sequence: embed_lm.plan.estimate.step_flops without recomputation
or the cached loss's extra pass) / step time / the GPU's peak dense bf16 FLOP/s (PEAK_TFLOPS by device name, or
--peak-tflops). Planned figures: plan_step of the same shapes at conf/plan.yaml's assumed MFU (0.4).
Time: the cached step alone is ~1.8e17 FLOPs, ~7.7 min at 40% MFU on an H100/H200 (the planner prints it first).
To stay within --budget-s (default 450 s), a cached step predicted to overrun it (from the measured plain
throughput) runs at the largest halved batch that fits, and the table and JSON say so; --budget-s 0 always runs 2048.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embed_lm.model.backbone import TinyBackbone, add_lora  # noqa: E402
from embed_lm.model.collator import TokenizedBatch  # noqa: E402
from embed_lm.model.encoder import TextEncoder  # noqa: E402
from embed_lm.model.pooling import Pooling  # noqa: E402
from embed_lm.plan.estimate import Shape, plan_step, step_flops  # noqa: E402
from embed_lm.plan.shapes import KNOWN  # noqa: E402

PEAK_TFLOPS = [  # dense bf16 tensor-core peak by device-name substring, most specific first (vendor data sheets)
    ("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("H800", 989), ("GH200", 989), ("B200", 2250),
    ("A100", 312), ("A800", 312), ("L40S", 362), ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125),
    ("RTX 4090", 165), ("RTX 3090", 71),
]
LORA_R, NEGATIVES = 16, 1
GB = 1024 ** 3


def peak_tflops(name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_TFLOPS if key.lower() in name.lower()), None)


def build_encoder(shape: Shape, model_path: str | None, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    from transformers import AutoModel, MistralConfig

    if model_path:
        model = AutoModel.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa").to(device)
    else:
        config = MistralConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                               num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                               num_key_value_heads=shape.kv_heads, max_position_embeddings=32768)
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    peft = add_lora(model, LORA_R, 32, 0.0, TinyBackbone.LORA_TARGETS, gradient_checkpointing=True)
    return TextEncoder(peft, Pooling("last_token")).train()


def shape_of_model(path: str) -> Shape:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    return Shape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                 c.num_key_value_heads, c.vocab_size)


def random_batch(n: int, seq: int, vocab: int, device: torch.device) -> TokenizedBatch:
    ids = torch.randint(3, vocab, (n, seq), device=device)  # (n, L)
    ones = torch.ones(n, seq, dtype=torch.long, device=device)
    return TokenizedBatch(ids, ones, torch.zeros_like(ones))


class Meter:
    """Step timing and peak memory on the device (CUDA: max_memory_allocated; CPU: not measured)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "Meter":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak_gb = torch.cuda.max_memory_allocated() / GB if self.device.type == "cuda" else None


def train_step(encoder: TextEncoder, optimizer, batch: int, seq: int, vocab: int, device, chunk: int | None,
               gather: bool = False) -> float:
    from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss
    from embed_lm.training.losses.infonce import InfoNCELoss

    queries = random_batch(batch, seq, vocab, device)  # (B, L)
    documents = random_batch(batch * (1 + NEGATIVES), seq, vocab, device)  # (B(1+N), L)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if chunk:
            loss = CachedInfoNCELoss(0.02, mini_batch_size=chunk).backward_step(encoder, queries, documents)
        else:
            q, d = encoder(queries), encoder(documents)  # (B, D), (B(1+N), D)
            loss = InfoNCELoss(0.02, gather_across_devices=gather)(q, d[:batch], d[batch:])
            loss.backward()
    optimizer.step()
    return float(loss.detach())


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def step_row(name: str, shape: Shape, batch: int, seq: int, meter: Meter, loss: float, peak: float | None,
             planned, chunk: int | None = None, devices: int = 1) -> dict:
    seqs = batch * (2 + NEGATIVES)
    model_flops = step_flops(shape, seqs, seq, checkpointing=False, cached=False)
    return {"section": name, "batch": batch, "global_batch": batch * devices, "chunk": chunk, "devices": devices,
            "tokens": seqs * seq, "step_s": meter.seconds, "tokens_per_s": seqs * seq / meter.seconds,
            "model_flops": model_flops, "mfu": None if not peak else model_flops / meter.seconds / (peak * 1e12),
            "peak_memory_gb": meter.peak_gb, "loss": loss,
            "plan": {"tokens_per_s": planned.tokens_per_second, "peak_memory_gb": planned.total_gb, "mfu": 0.4}}


def plain_search(encoder, optimizer, shape, seq, device, max_batch: int, peak) -> tuple[list[dict], dict]:
    trials, best = [], None
    batch = 1
    while batch <= max_batch:
        try:
            with Meter(device) as m:
                loss = train_step(encoder, optimizer, batch, seq, shape.vocab, device, None)
        except torch.OutOfMemoryError:
            trials.append({"batch": batch, "fits": False})
            break
        finally:
            optimizer.zero_grad(set_to_none=True)
            free(device)
        trials.append({"batch": batch, "fits": True, "step_s": m.seconds, "peak_memory_gb": m.peak_gb})
        best = step_row("plain", shape, batch, seq, m, loss, peak, plan_step(shape, LORA_R, batch, NEGATIVES, seq, 1,
                                                                              None, True, 2, peak or 989.0))
        batch *= 2
    return trials, best


def planned_largest_batch(shape: Shape, seq: int, memory_gb: float | None, max_batch: int) -> int | None:
    if memory_gb is None:
        return None
    best, batch = 0, 1
    while batch <= max_batch and plan_step(shape, LORA_R, batch, NEGATIVES, seq, 1, None, True).total_gb <= memory_gb:
        best, batch = batch, batch * 2
    return best


def cached_batch_in_budget(wanted: int, seconds_left: float, plain_tokens_per_s: float, seq: int) -> int:
    """The largest power-of-two fraction of `wanted` queries whose cached step, predicted from the measured plain
    throughput (4 passes per sequence vs the plain step's 3 with checkpointing), fits seconds_left."""
    batch = wanted
    while batch > 1 and batch * (2 + NEGATIVES) * seq * (4 / 3) / plain_tokens_per_s > seconds_left:
        batch //= 2
    return batch


def passkey_variants() -> dict[str, tuple[float, int | None]]:
    """conf/passkey_variant/<name>.yaml -> (rope base, sliding window), read from the option files they select."""
    out = {}
    for path in sorted((ROOT / "conf/passkey_variant").glob("*.yaml")):
        picks = {}
        for entry in yaml.safe_load(path.read_text())["defaults"]:
            key, value = next(iter(entry.items()))
            group = key.split()[-1].lstrip("/").split("@")[0]
            picks.update(yaml.safe_load((ROOT / "conf" / group / f"{value}.yaml").read_text()) or {})
        out[path.stem] = (float(picks["rope_base"]), picks["sliding_window"])
    return out


def passkey_rows(encoder: TextEncoder, shape: Shape, tokens: int, device) -> list[dict]:
    from embed_lm.passkey.variants import apply_variant

    rows = []
    encoder.eval()
    for name, (base, window) in passkey_variants().items():
        apply_variant(encoder.backbone, base, window)
        doc = random_batch(1, tokens, shape.vocab, device)  # (1, L)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                     enabled=device.type == "cuda"), Meter(device) as m:
            encoder(doc)
        rows.append({"section": f"passkey/{name}", "tokens": tokens, "rope_base": base, "sliding_window": window,
                     "step_s": m.seconds, "tokens_per_s": tokens / m.seconds, "peak_memory_gb": m.peak_gb})
        free(device)
    encoder.train()
    return rows


def print_table(result: dict) -> None:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    print(f"\n{result['device']['name']} x{result['device']['count']}, {result['model']['weights']} weights, "
          f"{result['model']['params'] / 1e9:.2f}B params, LoRA r{LORA_R}, {result['model']['seq_len']} tokens")
    print(f"{'section':<26}{'batch':>7}{'tokens/s':>11}{'(plan)':>10}{'MFU':>7}{'(plan)':>7}{'peak GB':>9}{'(plan)':>8}"
          f"{'step s':>9}")
    for r in result["rows"]:
        p = r.get("plan") or {}
        print(f"{r['section']:<26}{f(r.get('global_batch'), 'd'):>7}{f(r['tokens_per_s'], ',.0f'):>11}"
              f"{f(p.get('tokens_per_s'), ',.0f'):>10}{f(r.get('mfu'), '.1%'):>7}{f(p.get('mfu'), '.0%'):>7}"
              f"{f(r['peak_memory_gb'], '.1f'):>9}{f(p.get('peak_memory_gb'), '.1f'):>8}{r['step_s']:>9.2f}")
    s = result["search"]
    print(f"plain batch search: {', '.join(str(t['batch']) + ('' if t['fits'] else ' OOM') for t in s['trials'])}; "
          f"largest that fits {s['largest']}, planner's {s['planned_largest']}")
    for name, why in result["skipped"].items():
        print(f"{name}: skipped ({why})")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a local Mistral-architecture model folder (default: random init)")
    ap.add_argument("--tiny", action="store_true", help="tiny_mistral shapes on CPU (the test's size)")
    ap.add_argument("--out", type=Path, default=ROOT / "gpu_check.json")
    ap.add_argument("--seq", type=int, help="tokens per sequence (default 512; --tiny 32)")
    ap.add_argument("--max-batch", type=int, help="largest plain batch to try (default 4096; --tiny 4)")
    ap.add_argument("--cached-batch", type=int, help="queries per cached step (default 2048; --tiny 8)")
    ap.add_argument("--chunk", type=int, help="cached loss mini_batch_size (default 32; --tiny 4)")
    ap.add_argument("--passkey-tokens", type=int, help="passkey document length (default 32768; --tiny 256)")
    ap.add_argument("--fsdp-procs", type=int, help="FSDP processes (default: the GPU count; CPU: gloo)")
    ap.add_argument("--budget-s", type=float, default=450, help="seconds the whole check may take; a cached step "
                    "predicted (from the plain throughput) to overrun it runs at a smaller batch, said so in the "
                    "table and JSON (default 450; 0 = no limit)")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak bf16 TFLOP/s (default: PEAK_TFLOPS)")
    args = ap.parse_args(argv)
    tiny = args.tiny
    seq, max_batch = args.seq or (32 if tiny else 512), args.max_batch or (4 if tiny else 4096)
    cached_batch, chunk = args.cached_batch or (8 if tiny else 2048), args.chunk or (4 if tiny else 32)
    passkey_tokens = args.passkey_tokens or (256 if tiny else 32768)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    count = torch.cuda.device_count() if device.type == "cuda" else 1
    peak = args.peak_tflops or peak_tflops(name)
    memory_gb = torch.cuda.get_device_properties(0).total_memory / GB if device.type == "cuda" else None
    if tiny:
        c = TinyBackbone("tiny_mistral", "mistral").config_kwargs
        shape = Shape(c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                      c["num_key_value_heads"], 4096)
    else:
        shape = shape_of_model(args.model) if args.model else KNOWN["mistralai/Mistral-7B-v0.1"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cached_plan = plan_step(shape, LORA_R, cached_batch, NEGATIVES, seq, 1, chunk, True, 2, peak or 989.0)
    print(f"planner: the cached step ({cached_batch} queries) takes ~{cached_plan.step_seconds:.0f} s at 40% MFU")
    start = time.perf_counter()
    torch.manual_seed(0)
    encoder = build_encoder(shape, args.model, device, dtype)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-4)
    trials, plain = plain_search(encoder, optimizer, shape, seq, device, max_batch, peak)
    rows = [plain] if plain else []
    skipped = {}
    wanted = cached_batch
    procs = args.fsdp_procs or count
    if args.budget_s and plain:  # keep ~30 s for the passkey documents, ~90 s more for the FSDP section
        left = args.budget_s - (time.perf_counter() - start) - 30 - (90 if procs > 1 else 0)
        cached_batch = cached_batch_in_budget(cached_batch, left, plain["tokens_per_s"], seq)
        if cached_batch < wanted:
            skipped[f"cached at {wanted}"] = (f"predicted over --budget-s {args.budget_s:g}; ran {cached_batch} queries "
                                              "(raise --budget-s for the full batch)")
            cached_plan = plan_step(shape, LORA_R, cached_batch, NEGATIVES, seq, 1, chunk, True, 2, peak or 989.0)
    with Meter(device) as m:
        loss = train_step(encoder, optimizer, cached_batch, seq, shape.vocab, device, chunk)
    rows.append(step_row("cached", shape, cached_batch, seq, m, loss, peak, cached_plan, chunk))
    rows[-1]["wanted_global_batch"] = wanted
    free(device)
    if procs > 1 and plain:
        from gpu_check_fsdp import fsdp_row

        rows.append(fsdp_row(shape, args.model, procs, max(1, plain["batch"] // 2), seq, peak, device.type))
    else:
        skipped["fsdp"] = "one device; FSDP runs over all visible GPUs when there are several"
    rows += passkey_rows(encoder, shape, passkey_tokens, device)
    result = {"device": {"name": name, "type": device.type, "count": count, "peak_tflops": peak,
                         "memory_gb": memory_gb},
              "model": {"arch": "mistral", "weights": args.model or "random", "dtype": str(dtype).split(".")[-1],
                        "shape": asdict(shape), "params": shape.params(), "lora_params": shape.lora_params(LORA_R),
                        "seq_len": seq, "gradient_checkpointing": True, "negatives_per_query": NEGATIVES},
              "search": {"trials": trials, "largest": plain["batch"] if plain else 0, "max_batch": max_batch,
                         "planned_largest": planned_largest_batch(shape, seq, memory_gb, max_batch)},
              "rows": rows, "skipped": skipped, "seconds_total": time.perf_counter() - start,
              "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print_table(result)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} ({result['seconds_total']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
