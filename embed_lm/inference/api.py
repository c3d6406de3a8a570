"""The Python API: load a trained run, an export or a checkpoint and encode texts.

    import embed_lm
    m = embed_lm.load("outputs/train/runs/<run>")          # or an export folder, or <run>/checkpoints/last.ckpt
    q = m.encode_queries(["how do cats purr"], task="Given a question, retrieve passages that answer it")  # (1, D)
    d = m.encode_documents(passages, batch_size=32, show_progress_bar=True)                              # (N, D)
    scores = m.similarity(q, d)                                                                          # (1, N)
    e = m.encode(texts, convert_to_tensor=True)   # like sentence-transformers: no instruction, torch out

Built on embed_lm.inference.runs.load_run (which rebuilds the run's backbone, pooling, instruction style and max length)
and embed_lm.inference.embedder.Embedder (length-sorted batches, torch.inference_mode, bf16 autocast on GPUs). Embeddings
are L2-normalised float32, in input order; numpy arrays unless convert_to_tensor=True (then CPU tensors). A single
string gives one vector (D,). The LoRA adapter is merged into the weights, as `python -m embed_lm.encode` does,
and the two give the same embeddings (tests/test_api.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from embed_lm.inference.embedder import Embedder

Embeddings = Union[np.ndarray, Tensor]


class EmbeddingModel:
    """A loaded embedder: `encode`, `encode_queries`, `encode_documents`, `similarity`."""

    def __init__(self, embedder: Embedder, config: DictConfig) -> None:
        self.embedder, self.config = embedder, config

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    @property
    def max_length(self) -> int:
        return self.embedder.collator.max_length

    @property
    def default_task(self) -> str:
        """The run's test task, else MS-MARCO's: what encode_queries uses without `task`."""
        from embed_lm.model.instructions import default_task

        return default_task(self.config)

    def encode(self, texts: str | Sequence[str], prompt: str = "", batch_size: int = 32,
               max_tokens: int | None = None, convert_to_tensor: bool = False, show_progress_bar: bool = False
               ) -> Embeddings:
        """Embed texts as given, after `prompt` (default none): (N, D), or (D,) for one string. max_tokens: a token
        budget per batch instead of batch_size (long documents)."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        progress = None
        if show_progress_bar:
            from tqdm import tqdm

            progress = tqdm(total=len(items), unit="text", desc="encode")
        try:
            emb = self.embedder.encode(items, prompt, batch_size, max_tokens, progress)  # (N, D)
        finally:
            if progress is not None:
                progress.close()
        if not items:
            emb = torch.empty(0, self.dimension)
        emb = emb[0] if single else emb
        return emb if convert_to_tensor else emb.numpy()

    def encode_queries(self, texts: str | Sequence[str], task: str | None = None, kind: str = "short-long",
                       **kwargs) -> Embeddings:
        """Queries get the run's instruction for `task` (natural style: "Instruct: {task}\\nQuery: {text}")."""
        return self.encode(texts, self.embedder.style.query_prefix(task or self.default_task, kind), **kwargs)

    def encode_documents(self, texts: str | Sequence[str], task: str = "", kind: str = "short-long",
                         **kwargs) -> Embeddings:
        """Documents get the run's document prefix (none for the E5-mistral styles)."""
        return self.encode(texts, self.embedder.style.document_prefix(task, kind), **kwargs)

    @property
    def dimension(self) -> int:
        return int(self.embedder.encoder.backbone.config.hidden_size)

    @staticmethod
    def similarity(a: Embeddings, b: Embeddings) -> Embeddings:
        """Cosine similarity (A, B) of two sets of embeddings (or single vectors), numpy or torch like the input."""
        tensor = isinstance(a, Tensor)
        ta, tb = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        ta, tb = (torch.nn.functional.normalize(t.reshape(-1, t.shape[-1]), dim=-1) for t in (ta, tb))
        scores = ta @ tb.T  # (A, B)
        return scores if tensor else scores.numpy()

    def __repr__(self) -> str:
        backbone = self.config.backbone
        return (f"EmbeddingModel({backbone.get('name')}: {backbone.get('model_name_or_path')}, pooling "
                f"{self.config.pooling.get('name')}, max_length {self.max_length}, device {self.device})")


def load(path: str | Path, device: str = "auto", max_length: int | None = None, merge: bool = True
         ) -> EmbeddingModel:
    """A run folder (python -m embed_lm.train), an export (python -m embed_lm.export) or a .ckpt inside a run.
    device: auto (cuda if available), cpu, cuda, cuda:1, ...; merge=False keeps the LoRA adapter separate."""
    from embed_lm.inference.runs import load_run

    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    embedder, cfg = load_run(path, device=resolved, merge=merge, max_length=max_length)
    return EmbeddingModel(embedder, cfg)
