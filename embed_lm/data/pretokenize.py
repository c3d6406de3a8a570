"""Optional pre-tokenisation (`data.pretokenize=true`): every text is tokenised once, by a batched `datasets` `map`,
into an Arrow file next to its source table, keyed by the tokenizer, max length, EOS rule and instruction style.
Training batches are then only padded. The rows are exactly what TextCollator.tokenize builds at batch time
(instruction prefix included; tested), so turning it on changes speed, never the batches.

Text layout: columns query/positive/negative _tokens and _flags per example. Reference layout (MS-MARCO ids):
tokens and flags per query and per passage, so a passage is tokenised once however many examples use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets

from embed_lm.data.tables import ExampleTable
from embed_lm.model.collator import TextCollator
from embed_lm.model.instructions import InstructionStyle

IDS, FLAGS = datasets.Sequence(datasets.Value("int32")), datasets.Sequence(datasets.Value("int8"))


def token_key(collator: TextCollator, style: InstructionStyle) -> str:
    tok = collator.tokenizer
    spec = [type(tok).__name__, tok.name_or_path, len(tok), collator.max_length, collator.append_eos,
            collator._own_eos, f"{type(style).__module__}.{type(style).__qualname__}", repr(style)]
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()[:16]


def _split(rows: list[tuple[list[int], list[int]]]) -> tuple[list[list[int]], list[list[int]]]:
    return [ids for ids, _ in rows], [flags for _, flags in rows]


def pretokenize(table: ExampleTable, folder: Path, collator: TextCollator, style: InstructionStyle) -> ExampleTable:
    """The same table with token columns, computed once into `folder` (a source's cache folder)."""
    key = token_key(collator, style)
    common = {"batched": True, "batch_size": 1000, "new_fingerprint": key}
    if table.passages is not None:
        def texts(prefix: str):
            def tokenize(batch: dict) -> dict:
                ids, flags = _split(collator.tokenize([prefix] * len(batch["text"]), batch["text"]))
                return {"tokens": ids, "flags": flags}
            return tokenize

        features = datasets.Features({"tokens": IDS, "flags": FLAGS})
        out = ExampleTable(table.examples, table.queries, table.passages, table.task, table.task_kind)
        out.query_tokens = table.queries.map(
            texts(style.query_prefix(table.task, table.task_kind)), remove_columns=table.queries.column_names,
            features=features, cache_file_name=str(folder / f"query-tokens-{key}.arrow"), **common)
        out.passage_tokens = table.passages.map(
            texts(style.document_prefix(table.task, table.task_kind)), remove_columns=table.passages.column_names,
            features=features, cache_file_name=str(folder / f"passage-tokens-{key}.arrow"), **common)
        return out

    def tokenize(batch: dict) -> dict:
        q_prefix = [style.query_prefix(t, k) for t, k in zip(batch["task"], batch["task_kind"])]
        d_prefix = [style.document_prefix(t, k) for t, k in zip(batch["task"], batch["task_kind"])]
        q_ids, q_flags = _split(collator.tokenize(q_prefix, batch["query"]))
        p_ids, p_flags = _split(collator.tokenize(d_prefix, batch["positive"]))
        flat = [(d, n) for d, negs in zip(d_prefix, batch["negatives"]) for n in negs]
        n_ids, n_flags = _split(collator.tokenize([d for d, _ in flat], [n for _, n in flat])) if flat else ([], [])
        out = {"query_tokens": q_ids, "query_flags": q_flags, "positive_tokens": p_ids, "positive_flags": p_flags,
               "negative_tokens": [], "negative_flags": []}
        start = 0
        for negs in batch["negatives"]:
            out["negative_tokens"].append(n_ids[start:start + len(negs)])
            out["negative_flags"].append(n_flags[start:start + len(negs)])
            start += len(negs)
        return out

    features = datasets.Features({"query_tokens": IDS, "query_flags": FLAGS, "positive_tokens": IDS,
                                  "positive_flags": FLAGS, "negative_tokens": datasets.Sequence(IDS),
                                  "negative_flags": datasets.Sequence(FLAGS)})
    out = ExampleTable(table.examples)
    out.tokens = table.examples.map(tokenize, remove_columns=table.examples.column_names, features=features,
                                    cache_file_name=str(folder / f"tokens-{key}.arrow"), **common)
    return out
