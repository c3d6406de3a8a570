"""Length-aware micro-batches: compute (close to) only real tokens of a padded TokenizedBatch.

A training batch is padded to its longest row, so a batch of MS-MARCO-like passages (~80 tokens on average, some
near 256) runs ~3x the positions it needs. `length_chunks` sorts the rows by real length (attention_mask.sum),
cuts them into chunks (at most `rows` rows and at most `tokens` token positions: rows x the chunk's longest row)
and trims each chunk to its own longest row; `embed_by_length` embeds the chunks, each with its graph, and puts
the embeddings back in input order, so the loss and its gradients equal one padded pass
(tests/test_length_batching.py), with less padding computed. Both losses do this by default:

    python -m embed_lm.train                                                  # plain loss, tokens=auto
    python -m embed_lm.train loss.micro_batch_tokens=8192                     # plain loss, <= 8192 tokens a pass
    python -m embed_lm.train loss.micro_batch_tokens=null                     # one padded pass
    python -m embed_lm.train loss=cached_infonce loss.mini_batch_size=32      # the cached loss sorts its chunks

`tokens: auto` (the default of loss.micro_batch_tokens and loss.mini_batch_tokens) is AUTO_TOKENS[device type].
CPU 1024, measured with `python benchmarks/token_budget.py` (all-MiniLM-L6-v2 LoRA, 16 real triplets, 1 thread,
CPU seconds per step on the loaded 2-core dev machine, 2026-12-03): budget 512: 8.0 s (2,933 positions), 1024:
8.7 s (3,277), 2048: 10.3 s (4,017), one padded pass: 18.2 s (6,096). The time follows the positions computed
(2.6-2.7 ms each in chunks, 3.0 ms in the padded pass); 1024 is within noise of 512 and keeps several 256-token rows
a pass. GPU 16384: not measured (no GPU lent to this project's sessions); chosen so that a pass of 7B shapes has
16384 rows per matrix product (GPU matrix units are far from full below a few thousand) while one pass's
activations stay a small part of the memory; `python benchmarks/token_budget.py --device cuda` measures it.

Trimming keeps the columns where any row of the chunk has a real token, which works for left and right padding
alike; the encoder derives position ids from the mask, so a row's positions (and embedding) do not change.
Dropout: each chunk draws its own masks, so with dropout on the values equal "embed these chunks", not "embed
the whole batch at once" (as for any change of batch shape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from embed_lm.model.collator import TokenizedBatch


AUTO_TOKENS = {"cpu": 1024, "cuda": 16384}  # token budget per pass for tokens="auto"; see the module docstring


def token_budget(tokens: int | str | None, device: torch.device | str) -> int | None:
    """A token budget as configured (an int, None, or "auto") -> an int or None for `device`."""
    if tokens is None or isinstance(tokens, int):
        return tokens
    if str(tokens).lower() != "auto":
        raise ValueError(f"a token budget must be an integer >= 1, auto or null, got {tokens!r}")
    return AUTO_TOKENS.get(torch.device(device).type, AUTO_TOKENS["cuda"])


def real_lengths(batch: TokenizedBatch) -> Tensor:
    return batch.attention_mask.sum(dim=1)  # (B,)


def trim(batch: TokenizedBatch) -> TokenizedBatch:
    """Drop the columns that are padding in every row (trailing under right padding, leading under left)."""
    keep = batch.attention_mask.bool().any(dim=0)  # (L,)
    if bool(keep.all()):
        return batch
    return TokenizedBatch(batch.input_ids[:, keep], batch.attention_mask[:, keep], batch.instruction_mask[:, keep])


def chunk_sizes(lengths: list[int], rows: int | None = None, tokens: int | None = None) -> list[int]:
    """Row counts of consecutive chunks over `lengths` sorted longest first: at most `rows` rows and, with `tokens`,
    at most as many rows as fit the budget at the chunk's first (longest) row (at least one); neither = one chunk."""
    if rows is not None and rows < 1 or tokens is not None and tokens < 1:
        raise ValueError(f"chunk rows and tokens must be >= 1 (or null), got rows={rows}, tokens={tokens}")
    sizes, start = [], 0
    while start < len(lengths):
        size = rows if rows is not None else len(lengths)
        if tokens is not None:
            size = min(size, max(1, tokens // max(1, lengths[start])))
        size = min(size, len(lengths) - start)
        sizes.append(size)
        start += size
    return sizes


def length_chunks(batch: TokenizedBatch, rows: int | None = None, tokens: int | str | None = None
                  ) -> list[tuple[Tensor, TokenizedBatch]]:
    """(row indices into batch (b,), trimmed chunk (b, l)) pairs, longest rows first; see chunk_sizes
    (tokens="auto": AUTO_TOKENS for the batch's device)."""
    tokens = token_budget(tokens, batch.input_ids.device)
    n = real_lengths(batch)  # (B,)
    order = torch.argsort(n, descending=True, stable=True)  # (B,)
    chunks, start = [], 0
    for size in chunk_sizes(n[order].tolist(), rows, tokens):
        idx = order[start:start + size]  # (b,)
        chunks.append((idx, trim(TokenizedBatch(batch.input_ids[idx], batch.attention_mask[idx],
                                                batch.instruction_mask[idx]))))
        start += size
    return chunks


def restore_order(parts: list[Tensor], indices: list[Tensor]) -> Tensor:
    """Concatenate per-chunk rows (b_i, D) and put them back in input order: row indices[i][j] <- parts[i][j]."""
    index = torch.cat(indices).to(parts[0].device)  # (B,)
    return torch.cat(parts)[torch.argsort(index)]  # (B, D); a gather, so gradients flow to every chunk


def embed_by_length(embed: Callable[[TokenizedBatch], Tensor], batch: TokenizedBatch, rows: int | None = None,
                    tokens: int | str | None = None) -> Tensor:
    """embed(batch) computed as length-sorted, trimmed chunks that keep their graphs; (B, D) in input order."""
    chunks = length_chunks(batch, rows, tokens)
    return restore_order([embed(chunk) for _, chunk in chunks], [idx for idx, _ in chunks])


def chunked_positions(batch: TokenizedBatch, rows: int | None = None, tokens: int | str | None = None) -> int:
    """Token positions that length_chunks(batch, rows, tokens) holds: sum of chunk rows x chunk width."""
    tokens = token_budget(tokens, batch.input_ids.device)
    lengths = sorted(real_lengths(batch).tolist(), reverse=True)
    total, start = 0, 0
    for size in chunk_sizes(lengths, rows, tokens):
        total, start = total + size * lengths[start], start + size
    return total


def token_counts(*batches: TokenizedBatch) -> tuple[int, int]:
    """(real tokens, padded positions) of the given batches as collated (B x L each)."""
    real = sum(int(b.attention_mask.sum()) for b in batches)
    return real, sum(b.attention_mask.numel() for b in batches)


def length_slices(lengths: Sequence[int], batch_size: int = 64, max_tokens: int | None = None) -> Iterator[slice]:
    """Slices over token counts sorted longest first: batch_size rows, or, with max_tokens, as many rows as fit the
    budget at the batch's first (longest) row."""
    start = 0
    for size in chunk_sizes(list(lengths), None if max_tokens else batch_size, max_tokens):
        yield slice(start, start + size)
        start += size


def length_batches(lengths: Sequence[int], batch_size: int = 64, max_tokens: int | None = None) -> list[list[int]]:
    """Row index lists, longest rows first: batch_size rows a batch, or, with max_tokens, as many rows as fit the
    budget at the batch's first (longest) row. Rows of equal length keep their input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[part] for part in length_slices([lengths[i] for i in order], batch_size, max_tokens)]
