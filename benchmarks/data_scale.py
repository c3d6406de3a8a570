"""Memory and start-up time of the training data layer at MS-MARCO scale. Prints figures; asserts nothing.

    python benchmarks/data_scale.py                        # 1M passages (writes ~0.4 GB under --dir, builds the cache)
    python benchmarks/data_scale.py --passages 8800000     # the real collection's size, where disk and time allow
    python benchmarks/data_scale.py --passages 20000       # seconds

1. Writes an MS-MARCO-shaped collection in the ids format (collection.tsv, queries.tsv, triples of ids): random
   words at MS-MARCO's length distribution (passages ~56 words, log-normal; queries ~6 words), one training
   triple per passage, one query per 10 passages. Reused when present.
2. Builds the Arrow cache once (what `prepare_data` does on rank 0) and times it.
3. Starts --world fresh processes, one per rank, each as a training rank would: memory-map the tables, build the
   sampler and the collator (tiny_mistral tokenizer), draw the first batch, then --batches more. Each prints its RSS
   RSS growth from after the imports to after the batches, split into private heap (RssAnon: what each rank
   pays) and mapped file pages (RssFile: the Arrow tables, one page-cache copy per node shared by all ranks,
   growing with the pages batches touch, at most the files' size), and the time to the first batch. The same run on a small --reference collection gives the fixed costs (imports used lazily,
   tokenizer buffers); growth per million passages = (growth at --passages - growth at --reference) / millions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_collection(folder: Path, passages: int, seed: int = 0) -> None:
    if (folder / "done").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(2, 11, size=30_000)]

    def texts(n: int, mean_words: float, sigma: float):
        lengths = np.clip(rng.lognormal(np.log(mean_words) - sigma ** 2 / 2, sigma, size=n), 2, 400).astype(int)
        for length in lengths:
            yield " ".join(vocab[i] for i in rng.integers(0, len(vocab), size=length))

    with (folder / "collection.tsv").open("w") as f:
        for pid, text in enumerate(texts(passages, 56, 0.45)):
            f.write(f"{pid}\t{text}\n")
    n_queries = max(1, passages // 10)
    with (folder / "queries.tsv").open("w") as f:
        for qid, text in enumerate(texts(n_queries, 6, 0.35)):
            f.write(f"{qid}\t{text}\n")
    with (folder / "triples.tsv").open("w") as f:
        for pid in range(passages):
            f.write(f"{rng.integers(n_queries)}\t{pid}\t{rng.integers(passages)}\n")
    (folder / "done").touch()


def source(folder: Path):
    from embed_lm.data.msmarco import MsMarcoSource

    return MsMarcoSource("msmarco", collection=str(folder / "collection.tsv"), queries=str(folder / "queries.tsv"),
                         triples=str(folder / "triples.tsv"))


def memory_mb() -> dict[str, float]:
    """RSS split as Linux reports it: RssAnon (private heap: what each rank pays) and RssFile (pages of mapped files:
    the memory-mapped Arrow tables live here, one copy per node in the page cache, shared by every rank)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def one_rank(folder: Path, cache: Path, rank: int, world: int, batch_size: int, batches: int) -> dict:
    """Runs in its own process: what a training rank does before and during its first steps."""
    from embed_lm.data.datamodule import ContrastiveDataModule, PairCollator
    from embed_lm.data.sampler import MixtureBatchSampler
    from embed_lm.model.backbone import TinyBackbone
    from embed_lm.model.collator import TextCollator
    from embed_lm.model.instructions import NaturalInstruction

    tokenizer = TinyBackbone("tiny_mistral", "mistral").load().tokenizer
    before = memory_mb()
    start = time.perf_counter()
    dm = ContrastiveDataModule("scale", {"msmarco": source(folder)}, TextCollator(tokenizer, 512, True),
                               NaturalInstruction(), batch_size=batch_size, cache_dir=str(cache))
    dm.setup("fit")
    parts = dm.dataset.parts
    sampler = MixtureBatchSampler([len(p) for p in parts], [p.ratio for p in parts], batch_size, True, 0, rank, world)
    collate = PairCollator(dm.collator, dm.style)
    it = iter(sampler)
    collate([dm.dataset[i] for i in next(it)])
    first = time.perf_counter() - start
    for _ in range(batches):
        collate([dm.dataset[i] for i in next(it)])
    after = memory_mb()
    return {"rank": rank, "first_batch_s": first, "examples": len(dm.dataset),
            **{k: after[k] - before[k] for k in after}}


def prepare(args, passages: int) -> tuple[Path, Path]:
    folder, cache = args.dir / f"msmarco_{passages}", args.dir / f"cache_{passages}"
    start = time.perf_counter()
    write_collection(folder, passages)
    size = sum(p.stat().st_size for p in folder.glob("*.tsv")) / 2 ** 20
    print(f"collection: {passages:,} passages, {size:.0f} MB of TSV in {folder} "
          f"({time.perf_counter() - start:.0f} s to write or reuse)")
    from embed_lm.data.tables import ensure_built

    start = time.perf_counter()
    out = ensure_built(source(folder), cache)
    arrow = sum(p.stat().st_size for p in out.glob("*.arrow")) / 2 ** 20
    print(f"cache: {arrow:.0f} MB of Arrow in {out} ({time.perf_counter() - start:.0f} s to build or reuse)")
    return folder, cache


def ranks(args, passages: int) -> list[dict]:
    """One fresh process per rank, all at once, on the collection of `passages` passages."""
    cmd = [sys.executable, __file__, "--passages", str(passages), "--dir", str(args.dir), "--world", str(args.world),
           "--batch-size", str(args.batch_size), "--batches", str(args.batches), "--rank"]
    procs = [subprocess.Popen(cmd + [str(r)], stdout=subprocess.PIPE, text=True) for r in range(args.world)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=10_000, help="small collection: fixed costs to subtract")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/embed_lm_data_scale"))
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)  # internal: one rank's process
    args = parser.parse_args()
    if args.rank is not None:
        folder, cache = args.dir / f"msmarco_{args.passages}", args.dir / f"cache_{args.passages}"
        print(json.dumps(one_rank(folder, cache, args.rank, args.world, args.batch_size, args.batches)))
        return
    prepare(args, args.reference)
    prepare(args, args.passages)
    small, big = ranks(args, args.reference), ranks(args, args.passages)
    millions = (args.passages - args.reference) / 1e6
    for s, b in zip(small, big):
        print(f"rank {b['rank']}: {b['examples']:,} examples; first batch after {b['first_batch_s']:.2f} s "
              f"({s['first_batch_s']:.2f} s with {args.reference:,} passages). Growth after {args.batches + 1} "
              f"batches of {args.batch_size}, per million passages (minus the {args.reference:,}-passage run's "
              f"fixed costs): RSS {(b['VmRSS'] - s['VmRSS']) / millions:.1f} MB = private heap (RssAnon) "
              f"{(b['RssAnon'] - s['RssAnon']) / millions:.1f} MB + mapped file pages (RssFile, shared by all "
              f"ranks) {(b['RssFile'] - s['RssFile']) / millions:.1f} MB")


if __name__ == "__main__":
    main()
