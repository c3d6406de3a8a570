"""ContrastiveEncoderModule: the LightningModule that trains a TextEncoder with a contrastive loss.

    python -m embed_lm.train                    # see conf/train.yaml for every knob

Training step: queries (B, L) and documents (M, L) -> embeddings (B, D), (M, D) -> loss(q, d[:B], d[B:]).
Optimiser (paper): AdamW lr 1e-4, weight decay 0.1 over the LoRA parameters, linear warmup (100 steps) then linear
decay to 0 over the run. Validation/test: encode queries (dataloader 0) and corpus (dataloader 1) of the split, each
rank its 1/W of the length-sorted batches, gather the rows on rank 0, score once, log `val/ndcg@10`, `val/mrr@10`,
`val/recall@100` (or `test/...`) with the same value on every rank.
Every training step also logs `train/real_tokens` (non-padding tokens of its queries and documents),
`train/pad_fraction` (padding share of the token positions its forward passes compute: the padded batch, or the
length-sorted trimmed chunks of loss.micro_batch_* / the cached loss, or 0 with packing) and
`train/tokens_per_s` (real tokens / wall time from the step's start to the end of its optimiser step).
Checkpoints hold only the trainable (LoRA) weights and the optimiser state, so a 7B run's checkpoint is small;
every rank's RNG state and the exact-resume rules are embed_lm/training/step_state.py's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from embed_lm.model.collator import TokenizedBatch
from embed_lm.inference.checkpoint_files import clean_name
from embed_lm.model.distributed import average_gradients, broadcast_from_first, gather_rows
from embed_lm.model.encoder import TextEncoder
from embed_lm.model.length_batching import chunked_positions, embed_by_length, token_counts
from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss
from embed_lm.eval.retrieval_metrics import retrieval_metrics

log = logging.getLogger(__name__)


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
        self._pool_logged = False
        self.encoder.train()  # from_pretrained returns eval mode; training turns the backbone's dropout on

    def training_step(self, batch: dict[str, TokenizedBatch], batch_idx: int) -> Tensor:
        self._step_start = time.perf_counter()
        self._token_stats = self._count_tokens(batch)
        if self.cached:
            return self._cached_training_step(batch)
        q = self._embed(batch["queries"])  # (B, D)
        d = self._embed(batch["documents"])  # (M, D)
        B = q.size(0)
        self._log_negative_pool(B, d.size(0))
        mask = self._duplicate_mask(batch)
        loss = self.loss_fn(q, d[:B], d[B:], **({} if mask is None else {"mask": mask}))
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
        self._log_negative_pool(len(batch["queries"]), len(batch["documents"]))
        loss = self.loss_fn.backward_step(self.encoder, batch["queries"], batch["documents"],
                                          mask=self._duplicate_mask(batch))
        average_gradients(p for p in self.parameters() if p.requires_grad)  # what DDP's reducer would do
        self.configure_gradient_clipping(optimizer)
        optimizer.step()
        scheduler.step()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["queries"]))
        return loss

    def _duplicate_mask(self, batch: dict) -> Tensor | None:
        """The loss's mask of duplicate texts (from the collator's text ids), its size logged per step."""
        if "query_ids" not in batch or not hasattr(self.loss_fn, "duplicate_mask"):
            return None
        mask = self.loss_fn.duplicate_mask(batch["query_ids"], batch["doc_ids"])  # (B, P + M)
        self.log("train/masked_duplicates", mask.sum().float(), batch_size=len(batch["query_ids"]))
        return mask

    def _log_negative_pool(self, n_queries: int, n_documents: int) -> None:
        """Once, on rank 0, at the first step: which negatives each query sees (loss.gather_across_devices)."""
        if not self._pool_logged and self.global_rank == 0 and hasattr(self.loss_fn, "negative_pool"):
            log.info(self.loss_fn.negative_pool(n_queries, n_documents))
        self._pool_logged = True

    def _micro_batches(self) -> tuple[int | None, int | str | None] | None:
        """(rows, tokens) bounds of the length-sorted chunks the step embeds (tokens may be "auto": resolved for the
        batch's device), or None for one padded pass."""
        if self.cached:
            return self.loss_fn.mini_batch_size, self.loss_fn.mini_batch_tokens
        rows = getattr(self.loss_fn, "micro_batch_size", None)
        tokens = getattr(self.loss_fn, "micro_batch_tokens", None)
        return None if rows is None and tokens is None else (rows, tokens)

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
        """Clip by global norm at `grad_clip` (optimizer.grad_clip in the config), in both optimisation modes.
        FSDP: the norm over every rank's gradient shards (FSDP.clip_grad_norm_; Lightning refuses norm clipping)."""
        if self.grad_clip and isinstance(self.encoder, FSDP):
            self.encoder.clip_grad_norm_(self.grad_clip)
        elif self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def configure_model(self) -> None:
        """Lightning's sharding hook, called before every Trainer stage: under trainer=fsdp the encoder is wrapped
        here, once (the strategy's `shard`), and the same FSDP module then serves the test before training, fit with
        its validation, and the test after it. Other strategies have no `shard`: nothing to do."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is not None and not isinstance(self.encoder, FSDP):
            self.encoder = shard(self.encoder)

    # --- evaluation: dataloader 0 = queries, 1 = corpus of one RetrievalSplit, sharded over the ranks ---------
    def _eval_step(self, batch: tuple[Tensor, TokenizedBatch], dataloader_idx: int) -> None:
        indices, tokens = batch  # (b,), (b, L); index -1 = a filler row that evens the batch count across ranks
        emb = self.encoder(tokens)  # (b, D)
        keep = indices >= 0
        self._eval_outputs.setdefault(dataloader_idx, []).append((indices[keep].cpu(), emb[keep].cpu()))

    def _eval_epoch_end(self, stage: str) -> None:
        """Gather every rank's rows on rank 0, score once there, give every rank the same metrics."""
        outputs, self._eval_outputs = self._eval_outputs, {}
        datamodule = self.trainer.datamodule
        splits = datamodule.eval_splits(stage) if hasattr(datamodule, "eval_splits") else [
            (stage, datamodule.splits[stage])]  # pairs of loaders: 2k = split k's queries, 2k+1 its corpus
        for k, (prefix, split) in enumerate(splits):
            if not {2 * k, 2 * k + 1} <= set(outputs):
                continue
            q_emb, c_emb = (self._gathered(outputs[i], n) for i, n in ((2 * k, len(split.queries)),
                                                                      (2 * k + 1, len(split.corpus))))  # (Q, D), (C, D)
            metrics = None
            if q_emb is not None:
                doc_index = {doc_id: i for i, doc_id in enumerate(split.corpus)}
                relevant = [{doc_index[d]: r for d, r in split.qrels.get(qid, {}).items()} for qid in split.queries]
                metrics = retrieval_metrics(q_emb, c_emb, relevant, recall_k=self.recall_k)
            metrics = broadcast_from_first(metrics)
            for name, value in metrics.items():  # the same value on every rank: the mean over ranks is that value
                self.log(f"{prefix}/{name}", value, prog_bar=name == "ndcg@10" and k == 0, sync_dist=True)

    @staticmethod
    def _gathered(chunks: list[tuple[Tensor, Tensor]], n: int) -> Tensor | None:
        """This rank's (indices, embeddings) chunks + every other rank's, in row order on rank 0: (n, D)."""
        indices = gather_rows(torch.cat([i for i, _ in chunks]), to_all=False)  # (n,) on rank 0
        emb = gather_rows(torch.cat([e for _, e in chunks]), to_all=False)  # (n, D) on rank 0
        if indices is None:
            return None
        if indices.numel() != n or indices.unique().numel() != n:
            raise RuntimeError(f"evaluation gathered {indices.numel()} rows ({indices.unique().numel()} distinct) "
                               f"for {n} texts; validation and test need every batch (trainer.limit_val_batches "
                               "and trainer.limit_test_batches = 1.0)")
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
    def trainable_names(self) -> set[str]:
        """State-dict names of the trainable (LoRA) weights, whatever wraps the modules (FSDP, checkpointing)."""
        return {clean_name(n) for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_name(k) in trainable}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:  # absent when the strategy (FSDP, DeepSpeed) has loaded the weights itself
            missing = self.trainable_names() - {clean_name(k) for k in checkpoint["state_dict"]}
            if missing:
                raise KeyError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); was "
                               "it written by a run with the same backbone and lora_rank?")
