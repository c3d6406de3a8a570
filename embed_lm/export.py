"""Export a trained run as one merged model folder that sentence-transformers and transformers load directly.

    python -m embed_lm.export run=outputs/train/runs/<run> out=exported/<name>
    python -m embed_lm.export run=<run>/checkpoints/last.ckpt out=<dir> task="Given a claim, ..." dtype=bfloat16
    python -m embed_lm.export run=<run> out=<dir> card=true push_to_hub=<user>/<name>   # model card + upload

    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer("exported/<name>")
    q = model.encode(["how do cats purr"], prompt_name="query")     # the instruction for the exported task
    q = model.encode(["..."], prompt="Instruct: <another task>\\nQuery: ")
    d = model.encode(passages)                                      # documents: no prompt
    # or: transformers.AutoModel.from_pretrained("exported/<name>") + the run's pooling

The LoRA adapter is merged into the base weights (merge_and_unload, in float32; a lora_rank=full run's weights are
saved as they are) and saved with the run's tokenizer
(decoders: made to end every text in EOS, see embed_lm/inference/st_format.py) and the sentence-transformers module files:
the run's pooling (last token / mean / weighted mean), L2 normalisation, max_seq_length = the run's max length, and
named prompts "query" (the run's instruction style for `task`, default the run's test task, else MS-MARCO's) and
"document" (""). sentence-transformers then gives our Embedder's embeddings (tests/test_export.py).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from embed_lm.errors import FileConflictError
from embed_lm.inference.cli import KeyValueParser, UsageError, run_main
from embed_lm.model.instructions import TASK_KINDS, default_task
from embed_lm.inference.st_format import check_tokenizer, save_tokenizer, write_st_modules

log = logging.getLogger("embed_lm.export")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export(run: str | Path, out: Path, task: str | None = None, kind: str = "short-long", dtype: str = "float32",
           max_length: int | None = None, trust_remote_code: bool = False) -> dict[str, str]:
    """Write the merged model to `out`; returns the named prompts."""
    from omegaconf import OmegaConf, open_dict

    from embed_lm.inference.runs import MERGED_CONFIG, build_embedder, find_embedder_dir, read_config

    embedder_dir, ckpt = find_embedder_dir(run)
    cfg = read_config(embedder_dir / "config.yaml")
    if "dtype" in cfg.backbone:
        with open_dict(cfg):
            cfg.backbone.dtype = "float32"  # merge in float32 (dtype=auto would load bf16 weights on GPU machines)
            if cfg.backbone.get("tiny"):
                cfg.backbone.tiny.dtype = None  # a tiny base follows backbone.dtype
    embedder = build_embedder(cfg, embedder_dir, ckpt, device="cpu", merge=True, max_length=max_length,
                              trust_remote_code=trust_remote_code, where=str(embedder_dir / "config.yaml"))
    model, pooling, collator = embedder.encoder.backbone, embedder.encoder.pooling, embedder.collator
    style = embedder.style
    task = task or default_task(cfg)
    prompts = {"query": style.query_prefix(task, kind), "document": style.document_prefix(task, kind)}
    if pooling.exclude_instruction:
        log.warning("pooling.exclude_instruction=true: sentence-transformers (include_prompt=false) drops the "
                    "whole tokenized prompt, BOS/[CLS] and boundary token included, from pooling, where we drop "
                    "only the instruction tokens: its query embeddings will differ from ours (by a few percent in "
                    "cosine on tiny models); document embeddings (no prompt) agree")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # an encoder: no key/value cache
    out.mkdir(parents=True, exist_ok=True)
    model.to(DTYPES[dtype]).save_pretrained(out)
    save_tokenizer(collator.tokenizer, out, collator.append_eos, collator.max_length)
    write_st_modules(out, pooling, model.config.hidden_size, collator.max_length, prompts)
    check_tokenizer(out, collator, prompts["query"])
    # "." = this folder: load_run reads the weights next to embed_lm.yaml wherever the folder is moved or copied
    merged = OmegaConf.merge(cfg, {"backbone": {"model_name_or_path": ".", "size": "full", "dtype": "auto",
                                                "trust_remote_code": False}})
    OmegaConf.save(merged, out / MERGED_CONFIG)  # lets embed_lm.evaluate / encode / passkey load the export
    return prompts


def build_parser() -> argparse.ArgumentParser:
    p = KeyValueParser(prog="python -m embed_lm.export", description=__doc__.split("\n\n")[0],
                                epilog="Options also read as key=value: run=<dir> out=<dir> task=\"...\".")
    p.add_argument("--run", required=True, help="run folder written by embed_lm.train, or a .ckpt inside it")
    p.add_argument("--out", required=True, type=Path, help="folder to write the merged model to")
    p.add_argument("--task", help="task of the 'query' prompt (default: the run's data.test task, else MS-MARCO's)")
    p.add_argument("--kind", choices=TASK_KINDS, default="short-long", help="task kind (instruction_style=task_prefix)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights' dtype on disk "
                   "(bfloat16 halves a 7B model to ~14 GB; the merge itself runs in float32)")
    p.add_argument("--max-length", type=int, help="max_seq_length of the export (default: the run's)")
    p.add_argument("--force", action="store_true", help="replace --out if it holds an earlier export")
    p.add_argument("--card", nargs="?", const=True, default=False, type=lambda v: v.lower() in ("1", "true", "yes"),
                   help="write a model card, README.md (embed_lm/inference/model_card.py): card=true")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="write the card and upload the folder to this hub repo")
    p.add_argument("--trust-remote-code", action="store_true", help="let the run's base model run its own code "
                   "(only if you trust it; never read from the run folder)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            raise FileConflictError(f"out={args.out} exists and is not empty; pass --force to replace it")
        if not (args.out / "modules.json").is_file():
            raise FileConflictError(f"out={args.out} is not an earlier export (no modules.json); not replacing it")
        shutil.rmtree(args.out)
    if args.max_length is not None and args.max_length < 2:
        raise UsageError(f"max_length={args.max_length}: must be at least 2")
    prompts = export(args.run, args.out, args.task, args.kind, args.dtype, args.max_length, args.trust_remote_code)
    if args.card or args.push_to_hub:
        from embed_lm.inference.model_card import publish

        publish(args.run, args.out, prompts, args.card, args.push_to_hub)
    print(f"wrote {args.out}: SentenceTransformer({str(args.out)!r}).encode(texts, prompt_name='query') for "
          f"queries (prompt {prompts['query']!r}), .encode(texts) for documents", file=sys.stderr)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")  # raised inside peft's merge
    run_main(main)
