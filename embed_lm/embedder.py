"""Embedder: encode texts with a trained (or base) encoder using the run's own collator, pooling and instruction
style. Used by evaluation, encoding, export and the passkey study.

    emb = embedder.encode_queries(["how do cats purr"], task="Given a question, retrieve ...")   # (N, D)
    emb = embedder.encode_documents(passages, max_tokens=65536)                                # token budget

Batches are formed over texts sorted by length (longest first), so padding is minimal; with `max_tokens` a batch
holds as many texts as fit the budget at its longest text's token count (long documents one or a few at a time).
Runs under torch.inference_mode(); returns float32 L2-normalised embeddings on the CPU in input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from embed_lm.collator import TextCollator
from embed_lm.encoder import TextEncoder
from embed_lm.instructions import InstructionStyle


class Embedder:
    def __init__(self, encoder: TextEncoder, collator: TextCollator, style: InstructionStyle,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        self.encoder = encoder.eval().to(device)
        self.collator, self.style, self.device = collator, style, torch.device(device)
        self.dtype = dtype  # autocast dtype for inference (e.g. torch.bfloat16 on GPUs); None = model dtype

    @property
    def tokenizer(self):
        return self.collator.tokenizer

    def batches(self, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = None
                ) -> Iterator[list[int]]:
        """Index lists over texts, longest first; sized by batch_size, or by a token budget when max_tokens is set."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        start = 0
        while start < len(order):
            size = batch_size
            if max_tokens is not None:
                longest = len(self.tokenizer(texts[order[start]], truncation=True,
                                             max_length=self.collator.max_length)["input_ids"]) + 1
                size = max(1, max_tokens // longest)
            yield order[start:start + size]
            start += size

    @torch.inference_mode()
    def iter_encode(self, texts: Sequence[str], prefix: str = "", batch_size: int = 64,
                    max_tokens: int | None = None) -> Iterator[tuple[list[int], Tensor]]:
        """Yield (indices, embeddings (b, D)) batch by batch, for streaming large inputs to disk."""
        for idx in self.batches(texts, batch_size, max_tokens):
            batch = self.collator([prefix] * len(idx), [texts[i] for i in idx]).to(self.device)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                emb = self.encoder(batch)  # (b, D)
            yield idx, emb.float().cpu()

    def encode(self, texts: Sequence[str], prefix: str = "", batch_size: int = 64,
               max_tokens: int | None = None, progress=None) -> Tensor:
        out: Tensor | None = None
        for idx, emb in self.iter_encode(texts, prefix, batch_size, max_tokens):
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
