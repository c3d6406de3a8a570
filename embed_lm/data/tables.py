"""Training sources as memory-mapped Arrow tables (Hugging Face `datasets`), built once per content and shared.

A source is parsed once into Arrow files under `data.cache_dir/<source name>-<key>/`, where the key hashes the
source's options and the (path, size, content hash) of every file it reads: an edit that keeps a file's size and
puts its modification time back still gets a new table. A file's content hash (blake2b) is recomputed only when its
(size, mtime, ctime, inode) changes, and remembered in `data.cache_dir/file_hashes/` (ctime cannot be set back by
a user, so no edit slips through; a touch without a change rehashes but keeps the table). `done` records each
Arrow file's row count: a damaged table (overwritten, truncated) is detected when opened and rebuilt. Every rank and every DataLoader worker then
memory-maps the same files (`datasets.Dataset.from_file`): pages are shared through the OS page cache and an
example is decoded only when a batch asks for it. Lightning's `prepare_data` (local rank 0) builds, the other
ranks wait at its barrier and map.

Source interface (what a `data.sources.<name>` object provides; SyntheticSource and MsMarcoSource implement it):

    name: str; ratio: float | None          sampling weight among sources (None: its number of examples)
    check() -> None                         cheap existence checks, run before any model loads
    cache_key() -> dict                     JSON-able: every option the table depends on + file_fingerprints(...)
    build(out: Path) -> None                parse the files into the empty folder `out` (once per key, one process)
    open(out: Path) -> ExampleTable         memory-map what build wrote (every rank, every worker)
    parts(table) -> list[(name, rows, weight)]   optional: subsets sampled as sources of their own (rows: int
                                            array or None = all; weight: share of the source's ratio)

A source whose rows are plain texts subclasses RowSource and only writes `files()` and `rows(skips)` (dicts with
query, positive, negatives: list[str], task, task_kind); RowSource adds max_examples, the empty-file check, the
cache key and the Arrow writing. Malformed lines raise DataFormatError (file:line:field) or are skipped and
counted (skip_invalid), exactly as the readers in records.py do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from embed_lm.data.records import DataFormatError, SkipCounter, TrainExample

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # bump when what build() writes changes: old cache folders are then ignored
TEXT_SCHEMA = pa.schema([("query", pa.string()), ("positive", pa.string()), ("negatives", pa.list_(pa.string())),
                         ("task", pa.string()), ("task_kind", pa.string())])
datasets.disable_progress_bars()


_HASH_MEMO: ContextVar[Path | None] = ContextVar("hash_memo", default=None)  # set by cache_folder


def content_hash(path: Path) -> str:
    """blake2b of the file's bytes; remembered (under the cache folder's file_hashes/) until the file's size, mtime,
    ctime or inode changes."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    memo_dir = _HASH_MEMO.get()
    memo = None if memo_dir is None else memo_dir / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    if memo is not None and memo.is_file():
        try:
            record = json.loads(memo.read_text())
        except json.JSONDecodeError:  # a torn write of another process: hash again
            record = {}
        if record.get("stamp") == stamp:
            return record["blake2b"]
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(path), "stamp": stamp, "blake2b": digest.hexdigest()}))
        os.replace(tmp, memo)
    return digest.hexdigest()


def file_fingerprints(paths: list[Path]) -> list[list]:
    """(absolute path, size, content hash) per file: a changed file gets a new cache folder."""
    return [[str(p := path.resolve()), p.stat().st_size, content_hash(p)] for path in paths]


def write_arrow(path: Path, schema: pa.Schema, rows: Iterator[dict], batch_rows: int = 10_000) -> int:
    """Stream dict rows into an Arrow IPC stream file (the format datasets memory-maps); returns the row count."""
    n, buffer = 0, []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for row in rows:
            buffer.append(row)
            if len(buffer) == batch_rows:
                writer.write_batch(pa.RecordBatch.from_pylist(buffer, schema))
                n, buffer = n + len(buffer), []
        if buffer or n == 0:
            writer.write_batch(pa.RecordBatch.from_pylist(buffer, schema))
            n += len(buffer)
    return n


def open_arrow(path: Path) -> datasets.Dataset:
    return datasets.Dataset.from_file(str(path))  # memory-mapped, pickled by path into DataLoader workers


def source_key(source, cache_dir: str | Path) -> dict:
    """source.cache_key(), its file hashes remembered under cache_dir/file_hashes/."""
    token = _HASH_MEMO.set(Path(cache_dir).expanduser() / "file_hashes")
    try:
        return source.cache_key()
    finally:
        _HASH_MEMO.reset(token)


def cache_folder(source, cache_dir: str | Path) -> Path:
    key = json.dumps({"format": FORMAT_VERSION, "type": f"{type(source).__module__}.{type(source).__qualname__}",
                      **source_key(source, cache_dir)}, sort_keys=True, default=str)
    return Path(cache_dir).expanduser() / f"{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def row_counts(folder: Path) -> dict[str, int]:
    """Rows of every Arrow file `build` wrote into `folder` (what `done` records)."""
    return {p.name: len(open_arrow(p)) for p in sorted(folder.glob("*.arrow"))}


def damage(folder: Path) -> str | None:
    """Why the built table in `folder` cannot be used (a file missing, unreadable or with other row counts than
    `done` records), or None."""
    try:
        recorded = json.loads((folder / "done").read_text() or "{}")
    except json.JSONDecodeError as e:
        return f"done is not the record build wrote ({e})"
    for name, rows in recorded.items():
        try:
            found = len(open_arrow(folder / name))
        except (OSError, pa.ArrowException) as e:  # missing, overwritten or truncated: pyarrow cannot read it
            return f"{name} cannot be read ({type(e).__name__}: {str(e)[:200]})"
        if found != rows:
            return f"{name} holds {found} rows, {rows} were written"
    return None


def ensure_built(source, cache_dir: str | Path) -> Path:
    """The source's cache folder, building it first if absent or damaged (into a temporary folder renamed at the
    end, so a crashed or concurrent build never leaves a half-written table behind)."""
    out = cache_folder(source, cache_dir)
    if (out / "done").is_file():
        if (why := damage(out)) is None:
            return out
        log.warning("source %s: the cached Arrow table in %s is damaged (%s): rebuilding it", source.name, out, why)
        shutil.rmtree(out, ignore_errors=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("source %s: building the Arrow table in %s", source.name, out)
    try:
        source.build(tmp)
        (tmp / "key.json").write_text(json.dumps(source_key(source, cache_dir), indent=1, default=str))
        (tmp / "done").write_text(json.dumps(row_counts(tmp)))
        os.rename(tmp, out)
    except OSError:
        if not (out / "done").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the rename, or the build failed
    return out


class ExampleTable:
    """One source's examples, memory-mapped. Two layouts:

    text:       examples has columns query, positive, negatives (list), task, task_kind (what RowSource writes);
    references: examples has int columns query, positive, negatives (list) = rows of `queries` / `passages`
                (column text), and every example shares `task` and `task_kind` (MS-MARCO ids: a passage is stored
                once however many examples use it).
    """

    def __init__(self, examples: datasets.Dataset, queries: datasets.Dataset | None = None,
                 passages: datasets.Dataset | None = None, task: str | None = None, task_kind: str | None = None
                 ) -> None:
        self.examples, self.queries, self.passages = examples, queries, passages
        self.task, self.task_kind = task, task_kind
        self.tokens = self.query_tokens = self.passage_tokens = None  # set by pretokenize.pretokenize

    def __len__(self) -> int:
        return len(self.examples)

    def example(self, i: int) -> TrainExample:
        row = self.examples[int(i)]
        if self.passages is None:
            tokens = None
            if self.tokens is not None:
                t = self.tokens[int(i)]
                tokens = ((t["query_tokens"], t["query_flags"]), (t["positive_tokens"], t["positive_flags"]),
                          tuple(zip(t["negative_tokens"], t["negative_flags"])))
            return TrainExample(row["query"], row["positive"], tuple(row["negatives"]), row["task"], row["task_kind"],
                                tokens)
        text = self.passages.data.column("text")
        tokens = None if self.passage_tokens is None else (
            _row_tokens(self.query_tokens, row["query"]), _row_tokens(self.passage_tokens, row["positive"]),
            tuple(_row_tokens(self.passage_tokens, j) for j in row["negatives"]))
        return TrainExample(self.queries.data.column("text")[row["query"]].as_py(), text[row["positive"]].as_py(),
                            tuple(text[j].as_py() for j in row["negatives"]), self.task, self.task_kind, tokens)

    def positive(self, i: int) -> tuple[str, tuple | None]:
        """Example i's positive text and, when pre-tokenised, its (ids, flags)."""
        value = self.examples.data.column("positive")[int(i)].as_py()
        if self.passages is None:
            tokens = None if self.tokens is None else (self.tokens.data.column("positive_tokens")[int(i)].as_py(),
                                                       self.tokens.data.column("positive_flags")[int(i)].as_py())
            return value, tokens
        tokens = None if self.passage_tokens is None else _row_tokens(self.passage_tokens, value)
        return self.passages.data.column("text")[value].as_py(), tokens

    def negative_counts(self) -> np.ndarray:
        """(n,) number of hard negatives per example, without decoding any text."""
        lengths = pa.compute.list_value_length(self.examples.data.column("negatives"))
        return lengths.to_numpy(zero_copy_only=False)

    def column(self, name: str) -> pa.ChunkedArray:
        return self.examples.data.column(name)


def _row_tokens(table: datasets.Dataset, row: int) -> tuple[list[int], list[int]]:
    return table.data.column("tokens")[row].as_py(), table.data.column("flags")[row].as_py()


class RowSource:
    """Base for sources whose examples are texts; subclasses set name/ratio/skip_invalid/max_examples and write
    `files()` (the files read, in order) and `rows(skips)` (yields TEXT_SCHEMA dicts, file:line errors via skips).
    """

    name: str
    ratio: float | None = None
    skip_invalid: bool = False
    max_examples: int | None = None

    def files(self) -> list[Path]:
        raise NotImplementedError

    def rows(self, skips: SkipCounter) -> Iterator[dict]:
        raise NotImplementedError

    def options(self) -> dict:
        """Options (besides the files) that change the rows; part of the cache key."""
        return {}

    def check(self) -> None:
        self.files()

    def cache_key(self) -> dict:
        return {"files": file_fingerprints(self.files()), "skip_invalid": self.skip_invalid,
                "max_examples": self.max_examples, **self.options()}

    def limited_rows(self) -> Iterator[dict]:
        skips = SkipCounter(self.skip_invalid)
        for n, row in enumerate(self.rows(skips)):
            if self.max_examples is not None and n >= self.max_examples:
                break
            yield row
        skips.report(self.name)

    def build(self, out: Path) -> None:
        write_arrow(out / "examples.arrow", TEXT_SCHEMA, self.limited_rows())

    def open(self, out: Path) -> ExampleTable:
        return ExampleTable(open_arrow(out / "examples.arrow"))

    def load(self) -> list[TrainExample]:
        """Every example as a Python object, without a cache (small files, tests, `synth`'s own checks)."""
        return [TrainExample(r["query"], r["positive"], tuple(r["negatives"]), r["task"], r["task_kind"])
                for r in self.limited_rows()]


def no_examples_error(path: Path, name: str, skipped: bool) -> DataFormatError:
    why = "every line was invalid and skipped (skip_invalid)" if skipped else "it is empty"
    return DataFormatError(path, None, None, f"no training examples in this file ({why}); data source '{name}' "
                           f"(data.sources.{name}) needs at least one per file: remove the file or fix it")
