"""Encode a file of texts with a trained run into a float32 .npy matrix (N, D), row i = text i of the input.

    python -m embed_lm.encode run=outputs/train/runs/<run> --input docs.jsonl --output docs.npy
    python -m embed_lm.encode run=<run> --input queries.jsonl --output q.npy --as query --task "Given a question, ..."
    python -m embed_lm.encode run=<run>/checkpoints/last.ckpt --input lines.txt --output emb.npy --max-tokens 65536

Input: JSONL with a "text" field per line (--field picks another; blank lines are skipped), or any other file
(e.g. .txt) with one text per line; .gz is read transparently. Queries get the run's instruction style (natural:
"Instruct: {task}\\nQuery: "), documents nothing. The input is validated in a first pass (a bad line fails before
any encoding, naming file:line), then read in chunks of --chunk-size texts; the Embedder tokenizes each text once,
sorts by token count (no padding waste) and encodes under torch.inference_mode with the LoRA merged into the weights.
Rows go straight into <output>.partial through a memory map (the embeddings never sit in memory) and the file is
renamed to <output> when complete. Load the result with numpy.load(path, mmap_mode="r").
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from embed_lm.errors import FileConflictError, MissingFileError
from embed_lm.inference.cli import KeyValueParser, UsageError, check_at_least, run_main
from embed_lm.data.records import DataFormatError, SkipCounter, open_binary, read_jsonl, text_field
from embed_lm.inference.embedder import Embedder
from embed_lm.model.instructions import TASK_KINDS, InstructionStyle

log = logging.getLogger("embed_lm.encode")


def read_texts(path: Path, field: str = "text") -> Iterator[str]:
    """Texts of a JSONL file (one object per line, `field` a non-empty string) or of a one-text-per-line file."""
    if not path.is_file():
        raise MissingFileError(f"--input {path}: no such file")
    if ".jsonl" in path.suffixes or ".json" in path.suffixes:
        for lineno, obj in read_jsonl(path, SkipCounter(skip_invalid=False)):
            yield text_field(obj, field, path, lineno)
        return
    with open_binary(path) as f:  # decoded line by line: a non-UTF-8 byte names file:line
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, lineno, None, f"not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                                      f"{e.start + 1}); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8"
                                      ) from None
            if not text.strip():
                raise DataFormatError(path, lineno, None, "blank line; a text file holds one non-empty text per "
                                      "line (row i of the output is line i)")
            yield text


def count_texts(path: Path, field: str = "text") -> int:
    """Validate the whole input (raises DataFormatError at the first bad line) and count its texts."""
    n = sum(1 for _ in read_texts(path, field))
    if n == 0:
        raise DataFormatError(path, 1, None, f"the file holds no texts (expected one JSON object with a '{field}' "
                              "field per line, or one text per line)")
    return n


def encode_file(embedder: Embedder, input: Path, output: Path, prefix: str = "", field: str = "text",
                batch_size: int = 64, max_tokens: int | None = None, chunk_size: int = 100_000,
                progress: bool = True, n: int | None = None) -> tuple[int, int]:
    """Encode every text of `input` into `output` (.npy, float32 (N, D), input order); returns (N, D).
    `n` = count_texts(input, field) when the caller has validated the input already."""
    n = count_texts(input, field) if n is None else n
    partial = output.with_name(output.name + ".partial")
    output.parent.mkdir(parents=True, exist_ok=True)
    out: np.memmap | None = None
    bar = tqdm(total=n, unit="text", desc=f"encode {input.name}", disable=not progress, mininterval=1.0)
    texts = read_texts(input, field)
    try:
        for start in range(0, n, chunk_size):
            chunk = list(itertools.islice(texts, chunk_size))
            if len(chunk) != min(chunk_size, n - start):
                raise DataFormatError(input, None, None, f"changed while being read (counted {n} texts first)")
            for idx, emb in embedder.iter_encode(chunk, prefix, batch_size, max_tokens):  # emb (b, D)
                if out is None:
                    out = open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, emb.size(1)))  # (N, D)
                out[np.asarray(idx) + start] = emb.numpy()
                bar.update(len(idx))
        out.flush()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    dim = out.shape[1]
    del out
    os.replace(partial, output)
    return n, dim


def query_prefix(style: InstructionStyle, task: str | None, kind: str, example: str | None = None) -> str:
    """The instruction prefix for queries; --task is required when the style's prefix depends on it."""
    if task is None and style.query_prefix("a", kind) != style.query_prefix("b", kind):
        hint = f' (the run was tested with --task "{example}")' if example else ""
        raise UsageError(f"--as query with instruction_style={style.name} needs --task, the one-sentence "
                         f"description of the retrieval task that goes into the instruction{hint}")
    return style.query_prefix(task or "", kind)


def build_parser() -> argparse.ArgumentParser:
    p = KeyValueParser(prog="python -m embed_lm.encode", description=__doc__.split("\n\n")[0],
                                epilog="Options also read as key=value: run=<dir> batch_size=32.")
    p.add_argument("--run", required=True, help="run folder written by embed_lm.train, or a .ckpt inside it")
    p.add_argument("--input", required=True, type=Path, help="JSONL with a 'text' field per line, or one text a line")
    p.add_argument("--output", required=True, type=Path, help=".npy file to write, float32 (N, D)")
    p.add_argument("--as", dest="as_", choices=("document", "query"), default="document")
    p.add_argument("--task", help="task description for the query instruction (--as query)")
    p.add_argument("--kind", choices=TASK_KINDS, default="short-long", help="task kind (instruction_style=task_prefix)")
    p.add_argument("--field", default="text", help="JSONL field holding the text")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, help="token budget per batch instead of --batch-size (long documents)")
    p.add_argument("--max-length", type=int, help="truncate texts to this many tokens (default: the run's)")
    p.add_argument("--chunk-size", type=int, default=100_000, help="texts read, sorted and encoded at a time")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--trust-remote-code", action="store_true", help="let the run's base model run its own code "
                   "(only if you trust it; never read from the run folder)")
    p.add_argument("--no-merge", action="store_true", help="keep the LoRA adapter separate (slower; no rounding)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_at_least(batch_size=(args.batch_size, 1), max_tokens=(args.max_tokens, 1), max_length=(args.max_length, 2),
                   chunk_size=(args.chunk_size, 1))
    if args.output.exists() and not args.force:
        raise FileConflictError(f"--output {args.output} exists; pass --force to overwrite it")
    if args.as_ == "document" and args.task is not None:
        log.warning("--task is ignored for --as document (documents get no instruction)")
    n = count_texts(args.input, args.field)  # a bad line fails here, before the model loads
    from embed_lm.inference.runs import load_run

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    embedder, cfg = load_run(args.run, device=device, merge=not args.no_merge, max_length=args.max_length,
                             trust_remote_code=args.trust_remote_code)
    if args.as_ == "query":
        example = ((cfg.get("data") or {}).get("test") or {}).get("task")
        prefix = query_prefix(embedder.style, args.task, args.kind, example)
    else:
        prefix = embedder.style.document_prefix(args.task or "", args.kind)
    print(f"encoding {args.input} ({args.as_} texts) with prefix {prefix!r}, max length "
          f"{embedder.collator.max_length}, on {device}", file=sys.stderr)
    start = time.perf_counter()
    n, dim = encode_file(embedder, args.input, args.output, prefix, args.field, args.batch_size, args.max_tokens,
                         args.chunk_size, progress=not args.quiet, n=n)
    seconds = time.perf_counter() - start
    print(f"wrote {args.output}: ({n}, {dim}) float32, {n / seconds:.1f} texts/s", file=sys.stderr)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")  # raised inside peft's merge
    run_main(main)
