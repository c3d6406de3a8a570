"""Our Embedder as an mteb model (mteb's EncoderProtocol via AbsEncoder), so mteb's own code paths score it.

    model = MtebEncoder(embedder, name="embed_lm/my-run", batch_size=32)
    mteb.evaluate(model, tasks)

Each `encode` call applies the run's instruction style with the paper's per-task instruction
(embed_lm/eval/instructions.py) and returns float32 L2-normalised embeddings (cosine similarity).

With W processes (the ranks of a training run, or `torchrun --nproc_per_node=W -m embed_lm.evaluate`) every rank
runs mteb on the same tasks; inside each `encode` call a rank encodes 1/W of the length-sorted batches
(Embedder.iter_encode's shard) and the rows are gathered to every rank, so mteb's scoring sees the whole matrix
everywhere (scoring is repeated per rank: it is small next to encoding; only rank 0 writes results).
`encoded` counts the texts this rank encoded itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from embed_lm.inference.embedder import Embedder
from embed_lm.model.distributed import gather_rows, world
from embed_lm.eval.instructions import task_instruction, task_kind


def model_meta(name: str, embedder: Embedder, revision: str = "local") -> ModelMeta:
    model = embedder.encoder.backbone
    n_params = sum(p.numel() for p in model.parameters())
    return ModelMeta(
        loader=None, name=name, revision=revision, release_date=None, languages=None, n_parameters=n_params,
        memory_usage_mb=None, max_tokens=embedder.collator.max_length, embed_dim=None, license=None,
        open_weights=None, public_training_code=None, public_training_data=None, framework=["PyTorch"],
        similarity_fn_name=ScoringFunction.COSINE, use_instructions=True, training_datasets=None)


class MtebEncoder(AbsEncoder):
    def __init__(self, embedder: Embedder, name: str, batch_size: int = 32, max_tokens: int | None = None,
                 revision: str = "local") -> None:
        self.embedder, self.batch_size, self.max_tokens = embedder, batch_size, max_tokens
        self.mteb_model_meta = model_meta(name, embedder, revision)
        self.prefixes_used: dict[tuple[str, str], str] = {}  # (task, prompt type) -> prefix, for the record
        self.encoded = 0

    def prefix(self, task_metadata, prompt_type: PromptType | None) -> str:
        style = self.embedder.style
        kind = task_kind(task_metadata.type)
        if prompt_type == PromptType.document:
            prefix = style.document_prefix("", kind)
        else:
            instruction = task_instruction(task_metadata.name, task_metadata.type, task_metadata.prompt)
            prefix = style.query_prefix(instruction, kind)
        self.prefixes_used[(task_metadata.name, str(getattr(prompt_type, "value", prompt_type)))] = prefix
        return prefix

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        texts = [t for batch in inputs for t in batch["text"]]
        prefix = self.prefix(task_metadata, prompt_type)
        rank, size = world()
        if size == 1:
            self.encoded += len(texts)
            return self.embedder.encode(texts, prefix, batch_size=self.batch_size, max_tokens=self.max_tokens).numpy()
        chunks = list(self.embedder.iter_encode(texts, prefix, self.batch_size, self.max_tokens, shard=(rank, size)))
        indices = torch.tensor([i for idx, _ in chunks for i in idx], dtype=torch.long)  # (n_r,)
        dim = self.embedder.encoder.backbone.config.hidden_size
        emb = torch.cat([e for _, e in chunks]) if chunks else torch.empty(0, dim)  # (n_r, D)
        self.encoded += len(indices)
        indices, emb = gather_rows(indices), gather_rows(emb)  # (N,), (N, D) on every rank
        out = torch.empty(len(texts), emb.size(1))  # (N, D)
        out[indices] = emb
        return out.numpy()
