"""Embedder: encode texts with a trained (or base) encoder using the run's own collator, pooling and instruction
style. Used by evaluation, encoding, export and the passkey study.

    emb = embedder.encode_queries(["how do cats purr"], task="Given a question, retrieve ...")   # (N, D)
    emb = embedder.encode_documents(passages, max_tokens=65536)                                # token budget
    emb = embedder.encode_documents(passages, max_tokens=None, batch_size=64)                  # 64 texts a batch

Texts are taken longest first (by characters) in windows of ~window_chars characters; each window is tokenized
once and sorted by exact token count, so a batch of similar lengths wastes almost no padding (sorting by characters
alone padded the sample data by ~35%). With `max_tokens` a batch holds as many texts as fit the budget at its
longest text's token count (long documents one or a few at a time); the default, max_tokens="auto", is the
device's budget (length_batching.AUTO_TOKENS: CPU 1024, GPU 16384): on CPU, all-MiniLM-L6-v2 over 1024-token
batches took 12% less CPU time than over 32-text batches on the same sorted texts (docs/speed.md); None = batches
of batch_size texts. Runs under torch.inference_mode(); returns
float32 L2-normalised embeddings on the CPU in input order.

Sharding over W processes (`shard=(rank, W)`): every rank cuts the same batches and encodes batches rank, rank + W,
...; the batches are those of one process, so the gathered rows equal a single process's. Validation/test
(embed_lm/data/datamodule.py) and the mteb adapter (embed_lm/eval/mteb_encoder.py) batch through `length_batches`
too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from embed_lm.model.collator import TextCollator
from embed_lm.model.encoder import TextEncoder
from embed_lm.model.length_batching import length_batches, token_budget
from embed_lm.model.instructions import InstructionStyle


class Embedder:
    def __init__(self, encoder: TextEncoder, collator: TextCollator, style: InstructionStyle,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 window_chars: int = 4_000_000) -> None:
        self.encoder = encoder.eval().to(device)
        self.collator, self.style, self.device = collator, style, torch.device(device)
        self.dtype = dtype  # autocast dtype for inference (e.g. torch.bfloat16 on GPUs); None = model dtype
        self.window_chars = window_chars  # texts tokenized at a time (~1M tokens of ids held in memory)

    @property
    def tokenizer(self):
        return self.collator.tokenizer

    def windows(self, texts: Sequence[str]) -> Iterator[list[int]]:
        """Index lists over texts, longest (in characters) first, each holding up to window_chars characters."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        window: list[int] = []
        chars = 0
        for i in order:
            if window and chars + len(texts[i]) > self.window_chars:
                yield window
                window, chars = [], 0
            window.append(i)
            chars += len(texts[i])
        if window:
            yield window

    @torch.inference_mode()
    def iter_encode(self, texts: Sequence[str], prefix: str = "", batch_size: int = 64,
                    max_tokens: int | str | None = "auto",
                    shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[list[int], Tensor]]:
        """Yield (indices, embeddings (b, D)) batch by batch, for streaming large inputs to disk.

        Each window of texts is tokenized once, sorted by exact token count (so a batch pads to within a token or
        two of its rows) and cut into batches; the windows bound the memory the token ids take. With
        shard=(rank, W) only every W-th batch, from the rank-th, is encoded."""
        rank, world = shard
        max_tokens = token_budget(max_tokens, self.device)
        for window in self.windows(texts):
            rows = self.collator.tokenize([prefix] * len(window), [texts[i] for i in window])
            for picked in length_batches([len(ids) for ids, _ in rows], batch_size, max_tokens)[rank::world]:
                batch = self.collator.pad([rows[j] for j in picked]).to(self.device)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    emb = self.encoder(batch)  # (b, D)
                yield [window[j] for j in picked], emb.float().cpu()

    def encode(self, texts: Sequence[str], prefix: str = "", batch_size: int = 64,
               max_tokens: int | str | None = "auto", progress=None) -> Tensor:
        out: Tensor | None = None
        for idx, emb in self.iter_encode(texts, prefix, batch_size, max_tokens):  # emb (b, D)
            if out is None:
                out = torch.empty(len(texts), emb.size(1))  # (N, D)
            out[idx] = emb
            if progress is not None:
                progress.update(len(idx))
        return out if out is not None else torch.empty(0, 0)

    def encode_queries(self, texts: Sequence[str], task: str, kind: str = "short-long", **kwargs) -> Tensor:
        return self.encode(texts, self.style.query_prefix(task, kind), **kwargs)

    def encode_documents(self, texts: Sequence[str], task: str = "", kind: str = "short-long", **kwargs) -> Tensor:
        return self.encode(texts, self.style.document_prefix(task, kind), **kwargs)
