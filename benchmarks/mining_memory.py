"""Memory and time of hard-negative mining (embed_lm/inference/mining.py) at MS-MARCO scale. Prints figures; asserts
nothing.

    python benchmarks/mining_memory.py                          # 1M passages, 1,000 queries (writes ~0.4 GB)
    python benchmarks/mining_memory.py --passages 20000 --reference 5000   # seconds (what the test runs)
    python benchmarks/mining_memory.py --passages 8800000 --device cuda   # the real collection's size, on a GPU

1. Writes an MS-MARCO-shaped collection in the ids format (benchmarks/data_scale.py: random words at MS-MARCO's
   length distribution) and qrels for --queries queries (one positive each). Reused when present.
2. In a fresh process per size, as `python -m embed_lm.mine` does: reads the input into the training reader's Arrow
   tables (built once, cached), embeds every passage and the queries with a stand-in embedder (random unit vectors
   of --dim, seeded by each block's texts, so the figures are the mining machinery's and not a model's; a GPU model's
   embedding time is measured by benchmarks/encode_throughput.py), searches the top range_max + 1 in blocks, picks
   the window's negatives (no margin: random vectors do not rank the positive first) and writes the id triples. A
   thread samples /proc/self/status every 20 ms: the peak of the private heap (RssAnon: Python objects, numpy
   arrays, the top-K tables) and of the mapped file pages (RssFile: the Arrow tables and the embedding files, page
   cache that the OS can drop).
   Building the Arrow tables (once per input) is timed but not in the peaks: benchmarks/data_scale.py measures it.
3. The same run on a smaller --reference collection gives the fixed costs (imports, the blocks in flight: a
   corpus block of 65,536 passages and its score matrix, so --reference must hold at least that many); per million
   passages = (peak at --passages - peak at --reference) / millions of passages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def write_input(folder: Path, passages: int, queries: int) -> None:
    from data_scale import write_collection

    write_collection(folder, passages)
    qrels = folder / f"qrels.{queries}.tsv"
    if not qrels.is_file():
        rng = np.random.default_rng(1)
        n = min(queries, max(1, passages // 10))
        qrels.write_text("".join(f"{q}\t0\t{p}\t1\n" for q, p in enumerate(rng.integers(0, passages, n))))


class RandomEmbedder:
    """Random vectors seeded by the block's first texts: cheap, deterministic, no model (the machinery is measured)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def _encode(self, texts: list[str]) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b("".join(texts[:2]).encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal((len(texts), self.dim), dtype=np.float32)

    encode_query = encode_document = _encode


class PeakMemory(threading.Thread):
    """Peak RssAnon / RssFile (MB) of this process, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0.0, "RssFile": 0.0}
        self.stop = False

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peak:
                self.peak[key] = max(self.peak[key], int(value.split()[0]) / 1024)

    def run(self) -> None:
        while not self.stop:
            self.sample()
            time.sleep(0.02)


def worker(folder: Path, queries: int, dim: int, device: str) -> None:
    import tempfile

    from embed_lm.data.msmarco import MsMarcoSource
    from embed_lm.inference.mining import MiningWindow, mine, read_input, write_output

    times = {}
    t = time.perf_counter()
    source = MsMarcoSource("bench", collection=str(folder / "collection.tsv"), queries=str(folder / "queries.tsv"),
                           qrels=str(folder / f"qrels.{queries}.tsv"))
    read_input(source, folder / "cache")  # builds the tables once (cached across runs), before the measurement
    times["build the Arrow tables (once; cached)"] = time.perf_counter() - t
    monitor = PeakMemory()
    monitor.sample()
    start_anon, start_file = monitor.peak["RssAnon"], monitor.peak["RssFile"]
    monitor.peak = {"RssAnon": 0.0, "RssFile": 0.0}
    monitor.start()
    t = time.perf_counter()
    data = read_input(source, folder / "cache")
    times["open tables"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        t = time.perf_counter()
        mined = mine(data, RandomEmbedder(dim), MiningWindow(relative_margin=None), Path(tmp), device=device)
        times["embed + search + pick"] = time.perf_counter() - t
        t = time.perf_counter()
        lines = write_output(mined, Path(tmp) / "triples.tsv")
        times["write triples"] = time.perf_counter() - t
    monitor.stop = True
    monitor.join()
    print(json.dumps({"passages": len(data.passages), "pairs": len(data.rows), "triples": lines,
                      "anon_mb": monitor.peak["RssAnon"] - start_anon, "file_mb": monitor.peak["RssFile"] - start_file,
                      "seconds": times}))


def measure(folder: Path, passages: int, queries: int, dim: int, device: str) -> dict:
    t = time.perf_counter()
    write_input(folder, passages, queries)
    written = time.perf_counter() - t
    out = subprocess.run([sys.executable, __file__, "--worker", str(folder), "--queries", str(queries), "--dim",
                          str(dim), "--device", device], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["seconds"]["write the TSV input (reused when present)"] = written
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=100_000,
                        help="small run for the fixed costs; at least conf/mine.yaml corpus_block (65,536) passages")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384, help="embedding size (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench_mining")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.queries, args.dim, args.device)
    ref = measure(args.dir / f"p{args.reference}", args.reference, args.queries, args.dim, args.device)
    big = measure(args.dir / f"p{args.passages}", args.passages, args.queries, args.dim, args.device)
    millions = (big["passages"] - ref["passages"]) / 1e6
    emb_mb = big["passages"] * args.dim * 2 / 2**20  # the float16 passage embeddings file
    print(f"\nMining {big['pairs']} pairs over {big['passages']:,} passages (reference {ref['passages']:,}), "
          f"dim {args.dim}, device {args.device}; {big['triples']} triples written")
    print("| | peak at --passages | at --reference | growth per million passages |\n|---|---|---|---|")
    for key, name in (("anon_mb", "private heap (RssAnon), MB"), ("file_mb", "mapped file pages (RssFile), MB")):
        print(f"| {name} | {big[key]:.0f} | {ref[key]:.0f} | {(big[key] - ref[key]) / millions:.0f} |")
    print(f"(the float16 passage embeddings file: {emb_mb:.0f} MB, {emb_mb / (big['passages'] / 1e6):.0f} MB per "
          "million passages; mapped pages are page cache the OS can drop)")
    print("\n| step | seconds at --passages |\n|---|---|")
    for step, seconds in big["seconds"].items():
        print(f"| {step} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
