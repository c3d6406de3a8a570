"""ContrastiveEncoderModule: the LightningModule that trains a TextEncoder with a contrastive loss.

    python -m embed_lm.train                    # see conf/train.yaml for every knob

Training step: queries (B, L) and documents (M, L) -> embeddings (B, D), (M, D) -> loss(q, d[:B], d[B:]).
Optimiser (paper): AdamW lr 1e-4, weight decay 0.1 over the LoRA parameters, linear warmup (100 steps) then linear
decay to 0 over the run. Validation/test: encode queries (dataloader 0) and corpus (dataloader 1) of the split,
log `val/ndcg@10`, `val/mrr@10`, `val/recall@100` (or `test/...`).
Every training step also logs `train/real_tokens` (non-padding tokens of its queries and documents),
`train/pad_fraction` (padding share of the token positions its forward passes compute: the padded batch, or the
length-sorted trimmed chunks of loss.micro_batch_* / the cached loss, or 0 with packing) and
`train/tokens_per_s` (real tokens / wall time from the step's start to the end of its optimiser step).
Checkpoints hold only the trainable (LoRA) weights, optimiser and RNG state, so a 7B run's checkpoint is small
and `ckpt_path=...` resumes exactly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor

from embed_lm.model.collator import TokenizedBatch
from embed_lm.training.distributed import average_gradients
from embed_lm.model.encoder import TextEncoder
from embed_lm.model.length_batching import chunked_positions, embed_by_length, token_counts
from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss
from embed_lm.retrieval_metrics import retrieval_metrics


class ContrastiveEncoderModule(L.LightningModule):
    def __init__(self, encoder: TextEncoder, loss_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
                 lr: float = 1e-4, weight_decay: float = 0.1, warmup_steps: int = 100,
                 betas: tuple[float, float] = (0.9, 0.999), grad_clip: float | None = 1.0,
                 recall_k: int = 100) -> None:
        super().__init__()
        self.encoder, self.loss_fn = encoder, loss_fn
        self.lr, self.weight_decay, self.warmup_steps, self.betas = lr, weight_decay, warmup_steps, tuple(betas)
        self.grad_clip = grad_clip
        self.cached = isinstance(loss_fn, CachedInfoNCELoss)
        self.automatic_optimization = not self.cached  # the cached loss runs its own backward passes
        self.recall_k = recall_k
        self.strict_loading = False  # checkpoints carry only the trainable weights
        self._eval_outputs: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self._total_steps: int | None = None
        self._pending_rng: dict | None = None
        self.encoder.train()  # from_pretrained returns eval mode; training turns the backbone's dropout on

    def training_step(self, batch: dict[str, TokenizedBatch], batch_idx: int) -> Tensor:
        self._step_start = time.perf_counter()
        self._token_stats = self._count_tokens(batch)
        if self.cached:
            return self._cached_training_step(batch)
        q = self._embed(batch["queries"])  # (B, D)
        d = self._embed(batch["documents"])  # (M, D)
        B = q.size(0)
        loss = self.loss_fn(q, d[:B], d[B:])
        with torch.no_grad():
            scores = q @ d.T  # (B, M)
            acc = (scores.argmax(dim=1) == torch.arange(B, device=q.device)).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/in_batch_acc", acc, batch_size=B)
        return loss

    def _cached_training_step(self, batch: dict[str, TokenizedBatch]) -> Tensor:
        """GradCache step (embed_lm/training/losses/cached_infonce.py) under manual optimisation."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn.backward_step(self.encoder, batch["queries"], batch["documents"])
        average_gradients(p for p in self.parameters() if p.requires_grad)  # what DDP's reducer would do
        self.configure_gradient_clipping(optimizer)
        optimizer.step()
        scheduler.step()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["queries"]))
        return loss

    def _micro_batches(self) -> tuple[int | None, int | None] | None:
        """(rows, tokens) of the length-sorted chunks the step embeds, or None for one padded pass."""
        if self.cached:
            return (None, self.loss_fn.mini_batch_tokens) if self.loss_fn.mini_batch_tokens else (
                self.loss_fn.mini_batch_size, None)
        rows = getattr(self.loss_fn, "micro_batch_size", None)
        tokens = getattr(self.loss_fn, "micro_batch_tokens", None)
        return None if rows is None and tokens is None else (None if tokens else rows, tokens)

    def _embed(self, batch: TokenizedBatch) -> Tensor:
        chunks = self._micro_batches()
        return self.encoder(batch) if chunks is None else embed_by_length(self.encoder, batch, *chunks)  # (b, D)

    def _count_tokens(self, batch: dict[str, TokenizedBatch]) -> tuple[int, int]:
        """(real tokens, token positions the forward passes compute) for this step's batch."""
        real, padded = token_counts(batch["queries"], batch["documents"])
        chunks = self._micro_batches()
        if getattr(self.encoder, "packing", False):
            return real, real
        if chunks is not None:
            padded = sum(chunked_positions(batch[k], *chunks) for k in ("queries", "documents"))
        return real, padded

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Log the step's token throughput (after its optimiser step, in both optimisation modes)."""
        stats, self._token_stats = getattr(self, "_token_stats", None), None
        if stats is None:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        real, computed = stats
        elapsed = time.perf_counter() - self._step_start
        B = len(batch["queries"])
        self.log("train/real_tokens", float(real), batch_size=B)
        self.log("train/pad_fraction", 1.0 - real / max(1, computed), batch_size=B)
        self.log("train/tokens_per_s", real / max(elapsed, 1e-9), batch_size=B)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm at `grad_clip` (optimizer.grad_clip in the config), in both optimisation modes."""
        if self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    # --- evaluation: dataloader 0 = queries, 1 = corpus of one RetrievalSplit -------------------------------
    def _eval_step(self, batch: tuple[Tensor, TokenizedBatch], dataloader_idx: int) -> None:
        indices, tokens = batch
        self._eval_outputs.setdefault(dataloader_idx, []).append((indices.cpu(), self.encoder(tokens).cpu()))

    def _eval_epoch_end(self, stage: str) -> None:
        outputs, self._eval_outputs = self._eval_outputs, {}
        if set(outputs) != {0, 1}:
            return
        split = self.trainer.datamodule.splits[stage]
        q_emb, c_emb = (self._ordered(outputs[i]) for i in (0, 1))  # (Q, D), (C, D)
        doc_index = {doc_id: i for i, doc_id in enumerate(split.corpus)}
        relevant = [{doc_index[d]: r for d, r in split.qrels.get(qid, {}).items()} for qid in split.queries]
        metrics = retrieval_metrics(q_emb, c_emb, relevant, recall_k=self.recall_k)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "ndcg@10", rank_zero_only=True)

    @staticmethod
    def _ordered(chunks: list[tuple[Tensor, Tensor]]) -> Tensor:
        indices = torch.cat([i for i, _ in chunks])  # (n,)
        emb = torch.cat([e for _, e in chunks])  # (n, D)
        out = torch.empty_like(emb)
        out[indices] = emb
        return out

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # --- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Linear warmup to 1, then linear decay to 0 at the last step (transformers' linear schedule).

        The total step count is looked up lazily, at the first step past warmup: asking Lightning for
        `estimated_stepping_batches` inside configure_optimizers builds the train dataloader before a checkpoint
        is restored, and a mid-epoch resume would then silently replay the epoch's first batches.
        """
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if step == 0:
            return 1.0
        if self._total_steps is None:
            self._total_steps = int(self.trainer.estimated_stepping_batches)
        return max(0.0, (self._total_steps - step) / max(1, self._total_steps - self.warmup_steps))

    # --- small, exact checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        name, keys, pos, has_gauss, gauss = np.random.get_state()  # plain types: loadable with weights_only=True
        checkpoint["rng"] = {"python": random.getstate(),
                             "numpy": (name, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
                             "torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = trainable - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); was it "
                           "written by a run with the same backbone and lora_rank?")
        self._pending_rng = checkpoint.get("rng")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Restore the checkpoint's RNG state just before the first resumed step: creating the dataloader
        iterators after the restore draws from the global RNG, which would shift dropout masks otherwise."""
        rng, self._pending_rng = self._pending_rng, None
        if rng:
            random.setstate(rng["python"])
            name, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
