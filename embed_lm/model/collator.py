"""Tokenisation into padded batches with explicit masks (the collator owns every span; nothing is inferred later).

Decoder recipe (append_eos=True): tokenize `prefix + text` with the tokenizer's own BOS, truncate to max_length - 1,
drop an EOS the tokenizer may have added, then append the EOS id explicitly (no tokenizer flag is trusted: recent
transformers releases ignore `add_eos_token` for Mistral). The EOS therefore survives truncation.
Encoder recipe (append_eos=False): the tokenizer's own special tokens ([CLS] ... [SEP]) and truncation.
`collator(prefixes, texts)` = `collator.pad(collator.tokenize(prefixes, texts))`; the Embedder calls the two steps
apart, so it tokenizes each text once and batches by exact token counts.

Masks, all (B, L) int64:
    attention_mask     1 on real tokens, 0 on padding
    instruction_mask   1 on tokens of the instruction prefix (from the tokenizer's character offsets)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from embed_lm.errors import ConfigError


@dataclass
class TokenizedBatch:
    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L)
    instruction_mask: Tensor  # (B, L)

    def to(self, device: torch.device | str) -> "TokenizedBatch":
        return TokenizedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.instruction_mask)))

    def __len__(self) -> int:
        return self.input_ids.size(0)


class TextCollator:
    """Turns (prefix, text) pairs into a TokenizedBatch; see the module docstring for the EOS rule."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, append_eos: bool,
                 padding_side: str = "right", pad_to_multiple_of: int | None = None) -> None:
        if not tokenizer.is_fast:
            raise ConfigError(f"{type(tokenizer).__name__} is a slow tokenizer; embed_lm needs a fast one "
                             "(character offsets mark the instruction span)")
        if append_eos and tokenizer.eos_token_id is None:
            raise ConfigError("append_eos=True but the tokenizer has no eos_token; set backbone.append_eos=false "
                             "for encoder backbones")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        min_length = 2 if append_eos else 1
        if max_length < min_length:
            raise ConfigError(f"max_length must be >= {min_length}, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.append_eos = append_eos
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        # a tokenizer that appends EOS itself (e.g. an exported one) gets one more token of room, which its own EOS
        # takes and we replace: every tokenizer then yields the same max_length - 1 text tokens + EOS
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self._own_eos = int(append_eos and bool(probe) and probe[-1] == tokenizer.eos_token_id)

    def __call__(self, prefixes: list[str], texts: list[str]) -> TokenizedBatch:
        return self.pad(self.tokenize(prefixes, texts))

    def tokenize(self, prefixes: list[str], texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """(token ids, instruction flags) per text, truncated and with the EOS rule applied; not padded."""
        full = [p + t for p, t in zip(prefixes, texts)]
        limit = self.max_length - 1 + self._own_eos if self.append_eos else self.max_length
        enc = self.tokenizer(full, add_special_tokens=True, truncation=True, max_length=limit,
                             return_offsets_mapping=True, return_special_tokens_mask=True)
        rows = []
        for i, prefix in enumerate(prefixes):
            ids, special, offsets = enc["input_ids"][i], enc["special_tokens_mask"][i], enc["offset_mapping"][i]
            end = len(prefix.rstrip())  # the trailing space of "Query: " belongs to the next token
            flags = [int(not s and start < end) for s, (start, _) in zip(special, offsets)]
            if self.append_eos:
                if ids and ids[-1] == self.tokenizer.eos_token_id and special[-1]:
                    ids, flags = ids[:-1], flags[:-1]
                ids, flags = ids + [self.tokenizer.eos_token_id], flags + [0]
            rows.append((ids, flags))
        return rows

    def pad(self, rows: list[tuple[list[int], list[int]]]) -> TokenizedBatch:
        """Pad (token ids, instruction flags) rows to the longest one (rounded up to pad_to_multiple_of)."""
        L = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            L = -(-L // self.pad_to_multiple_of) * self.pad_to_multiple_of
        left = self.padding_side == "left"

        def fill(seq: list[int], value: int) -> list[int]:
            gap = [value] * (L - len(seq))
            return gap + seq if left else seq + gap

        input_ids = torch.tensor([fill(ids, self.pad_id) for ids, _ in rows], dtype=torch.long)  # (B, L)
        attention = torch.tensor([fill([1] * len(ids), 0) for ids, _ in rows], dtype=torch.long)  # (B, L)
        instruction = torch.tensor([fill(flags, 0) for _, flags in rows], dtype=torch.long)  # (B, L)
        return TokenizedBatch(input_ids, attention, instruction)
