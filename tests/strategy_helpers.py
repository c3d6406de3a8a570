"""Measure, in a 2-process gloo run, what DDP and FSDP FULL_SHARD really hold per rank and send per step, for the
planner test (tests/test_plan_strategies.py): bytes of the parameters, gradients and optimiser state each rank
holds after one training step, and the volume of every collective, counted by wrapping torch.distributed's
collectives (FSDP, the embedding gather; DDP's C++ reducer is routed through them by its Python all-reduce hook)."""

from __future__ import annotations

import functools
from collections import defaultdict

import torch
import torch.distributed as dist

from scale_helpers import batch, examples, tiny_encoder


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class CollectiveCounter:
    """Wraps torch.distributed's collectives while active; volume = the full tensor's bytes (see sharding.py).
    The embedding gather's backward is a reduce-scatter on NCCL, W scatters on gloo (torch.distributed.nn): counted
    as reduce_scatter, the root's list being the rank's share."""

    VOLUME = {  # collective -> (kind, bytes of one call from its arguments)
        "all_gather": ("all_gather", lambda out, x, *a, **k: sum(nbytes(t) for t in out)),
        "all_gather_single": ("all_gather", lambda out, x, *a, **k: nbytes(out)),
        "all_gather_into_tensor": ("all_gather", lambda out, x, *a, **k: nbytes(out)),
        "reduce_scatter_single": ("reduce_scatter", lambda out, x, *a, **k: nbytes(x)),
        "reduce_scatter_tensor": ("reduce_scatter", lambda out, x, *a, **k: nbytes(x)),
        "all_to_all": ("reduce_scatter", lambda out, x, *a, **k: sum(nbytes(t) for t in x)),
        "scatter": ("reduce_scatter", lambda out, x=None, *a, **k: sum(nbytes(t) for t in x or [])),
        "all_reduce": ("all_reduce", lambda x, *a, **k: nbytes(x)),
    }

    def __init__(self) -> None:
        self.volume: dict[str, int] = defaultdict(int)
        self._saved: dict = {}

    def __enter__(self) -> "CollectiveCounter":
        for name, (kind, size) in self.VOLUME.items():
            if not hasattr(dist, name):
                continue
            original = self._saved[name] = getattr(dist, name)

            @functools.wraps(original)
            def counted(*args, _original=original, _kind=kind, _size=size, **kwargs):
                self.volume[_kind] += _size(*args, **kwargs)
                return _original(*args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(dist, name, original)



def wrap(encoder, strategy: str, counter: CollectiveCounter):
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        model = DistributedDataParallel(encoder)
        model.register_comm_hook(None, allreduce_hook)  # DDP's default, but through dist.all_reduce: counted
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

    from embed_lm.training.strategies import lora_wrap_policy

    policy = lora_wrap_policy({MistralDecoderLayer})  # what trainer=fsdp wraps with: LoRA layers in their own units
    return FullyShardedDataParallel(encoder, auto_wrap_policy=policy, use_orig_params=True,
                                    sharding_strategy=ShardingStrategy.FULL_SHARD, device_id=torch.device("cpu"))


def held(params, trainable: bool) -> int:
    return sum(nbytes(p) for p in params if p.requires_grad == trainable)


def strategy_worker(rank: int, world_size: int, init_file: str, out_dir: str, per_rank: int) -> None:
    """One rank: for ddp and fsdp, one training step (plain InfoNCE with cross-device negatives, gradient
    checkpointing, AdamW); rank r saves what it held and what was communicated to <out_dir>/rank<r>.pt."""
    from embed_lm.training.losses.infonce import InfoNCELoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    data = batch(examples(world_size * per_rank)[rank * per_rank:(rank + 1) * per_rank])
    results = {}
    for strategy in ("ddp", "fsdp"):
        counter = CollectiveCounter()
        model = wrap(tiny_encoder(checkpointing=True), strategy, counter)
        params = list(model.parameters())
        optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)
        with counter:
            q, d = model(data["queries"]), model(data["documents"])  # (B, D), (2B, D)
            loss = InfoNCELoss(0.02, gather_across_devices=True)(q, d[:per_rank], d[per_rank:])
            loss.backward()
            optimizer.step()
        results[strategy] = {
            "frozen_param_bytes": held(params, False), "lora_param_bytes": held(params, True),
            "grad_bytes": sum(nbytes(p.grad) for p in params if p.grad is not None),
            "optim_bytes": sum(nbytes(t) for s in optimizer.state.values() for t in s.values()
                               if torch.is_tensor(t) and t.dim() > 0),  # AdamW's step counters are scalars
            "comm": dict(counter.volume), "documents": d.size(0), "dim": d.size(1)}
        dist.barrier()
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def small_split(folder, n_queries: int = 16, n_other_docs: int = 48):
    """A small BEIR split (the first n_queries of the sample's test split, their relevant documents and
    n_other_docs more) written to `folder`: the multi-process runs' test and validation split, seconds to encode."""
    import json as json_
    from pathlib import Path

    from conftest import SAMPLE

    src, dst = Path(SAMPLE) / "test", Path(folder)
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    queries = [json_.loads(line) for line in (src / "queries.jsonl").read_text().splitlines()[:n_queries]]
    ids = {q["_id"] for q in queries}
    header, *rows = (src / "qrels" / "test.tsv").read_text().splitlines()
    qrels = [r for r in rows if r.split("\t")[0] in ids]
    relevant = {r.split("\t")[1] for r in qrels}
    docs, others = [], 0
    for line in (src / "corpus.jsonl").read_text().splitlines():
        doc = json_.loads(line)
        if doc["_id"] in relevant or others < n_other_docs:
            others += doc["_id"] not in relevant
            docs.append(line)
    (dst / "queries.jsonl").write_text("".join(json_.dumps(q) + "\n" for q in queries))
    (dst / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    for split in ("test", "dev"):
        (dst / "qrels" / f"{split}.tsv").write_text("\n".join([header, *qrels]) + "\n")
    return dst


def one_process_metrics(run, split_dir, task: str, dtype=None) -> dict[str, float]:
    """The run's adapter evaluated by one process (load_run's Embedder, as `encode` does) on split_dir, prefixed
    test/; dtype: the autocast dtype the training's test stage computed in (bf16-mixed: torch.bfloat16)."""
    from embed_lm.data.beir import BeirSplit
    from embed_lm.eval.retrieval_metrics import retrieval_metrics
    from embed_lm.inference.runs import load_run

    embedder, _ = load_run(run)
    embedder.dtype = dtype
    data = BeirSplit(str(split_dir), "test", task).load()
    q = embedder.encode_queries(list(data.queries.values()), task=data.task)  # (Q, D)
    c = embedder.encode_documents(list(data.corpus.values()))  # (C, D)
    index = {d: i for i, d in enumerate(data.corpus)}
    scores = retrieval_metrics(q, c, [{index[d]: r for d, r in data.qrels[x].items()} for x in data.queries])
    return {f"test/{k}": v for k, v in scores.items()}
