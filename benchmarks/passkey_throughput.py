"""Passkey encoding throughput: documents/s and peak memory per length bucket, the way the study encodes them
(one bucket per length, token-budget batches, inference_mode, sdpa attention, last-token pooling).

    python benchmarks/passkey_throughput.py                                     # tiny_mistral, CPU, 256 .. 2k
    python benchmarks/passkey_throughput.py --device cuda --model mistral7b-shape --lengths 4096 8192 32768
    python benchmarks/passkey_throughput.py --device cuda --model mistral7b-shape --window none --max-tokens 131072

mistral7b-shape is a random-init model of Mistral-7B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, FFN
14336, vocab 32000) in bf16, built on the device (no download); the documents come from the bundled tiny tokenizer,
fitted to the exact lengths (throughput depends on the token count, not on the vocabulary). Peak memory: on CUDA
torch.cuda.max_memory_allocated per bucket; on CPU the process's peak resident memory sampled every 5 ms during the
bucket (psutil), so it includes the weights.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: E402

from embed_lm.model.backbone import TINY_TOKENIZER, TinyBackbone  # noqa: E402
from embed_lm.model.collator import TextCollator  # noqa: E402
from embed_lm.inference.embedder import Embedder  # noqa: E402
from embed_lm.model.encoder import TextEncoder  # noqa: E402
from embed_lm.model.instructions import NoInstruction  # noqa: E402
from embed_lm.passkey.generate import generate_task  # noqa: E402
from embed_lm.passkey.variants import apply_variant  # noqa: E402
from embed_lm.model.pooling import Pooling  # noqa: E402

MISTRAL_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def build_model(name: str, device: str):
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
    if name in ("tiny_mistral", "tiny_llama"):
        return TinyBackbone(name, name.split("_")[1]).load().model, tokenizer
    if name != "mistral7b-shape":
        raise SystemExit(f"--model must be tiny_mistral, tiny_llama or mistral7b-shape, got {name}")
    config = AutoConfig.for_model("mistral", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, **MISTRAL_7B)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = AutoModel.from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model, tokenizer


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled in a thread)."""

    def __enter__(self):
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            if self.stop.wait(0.005):
                return

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny_mistral", help="tiny_mistral | tiny_llama | mistral7b-shape")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--docs", type=int, default=16, help="documents per length bucket")
    parser.add_argument("--max-tokens", type=int, default=65536, help="token budget of one batch")
    parser.add_argument("--window", default="4096", help="sliding window: an int or none (variant)")
    parser.add_argument("--rope-base", type=float, default=1e4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    model, tokenizer = build_model(args.model, args.device)
    apply_variant(model, args.rope_base, None if args.window == "none" else int(args.window))
    model.config.use_cache = False
    collator = TextCollator(tokenizer, max(args.lengths), append_eos=True)
    dtype = torch.bfloat16 if cuda else None
    embedder = Embedder(TextEncoder(model, Pooling("last_token")), collator, NoInstruction(), args.device, dtype)
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} threads"
    print(f"{args.model} on {args.device} ({where}), window {args.window}, RoPE base {args.rope_base:g}, "
          f"budget {args.max_tokens} tokens/batch")
    print(f"{'length':>7} {'docs':>5} {'batch':>5} {'docs/s':>9} {'tokens/s':>10} {'peak MiB':>9}")
    for length in args.lengths:
        task = generate_task(tokenizer, length, n_queries=1, n_candidates=args.docs, scheme="shared")
        texts = [d.text for d in task.docs]
        embedder.encode_documents(texts[: max(1, args.max_tokens // length)], max_tokens=args.max_tokens)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as rss:
            start = time.perf_counter()
            embedder.encode_documents(texts, max_tokens=args.max_tokens)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if cuda else rss.peak
        batch = max(1, args.max_tokens // length)
        print(f"{length:>7} {len(texts):>5} {batch:>5} {len(texts) / seconds:>9.2f} "
              f"{len(texts) * length / seconds:>10.0f} {peak / 2**20:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
