"""Mine hard negatives for training pairs that have none, as the paper does (configured by conf/mine.yaml).

    python -m embed_lm.mine                                               # the bundled sample, all-MiniLM-L6-v2
    python -m embed_lm.mine model.run=outputs/train/runs/<run> input.collection=... input.queries=... \\
        input.qrels=... output=/data/msmarco/triples.mined.ids.tsv       # a trained run mines MS-MARCO
    python -m embed_lm.mine model.sentence_transformer=<name or path> input.jsonl=pairs.jsonl output=mined.jsonl
    python -m embed_lm.train data.sources.msmarco.triples=<output>        # train on the mined triples

Order: every option and the output folder are checked, then the inputs are read into the training reader's Arrow
tables (file:line errors), then the model loads and embeds; so a bad input costs seconds, not an embedding pass.
An embedder (a base model, a trained run, or a sentence-transformers model) embeds the pairs' queries (with the
task's instruction) and the whole corpus; embed_lm/inference/mining.py searches in blocks and picks each pair's
negatives from ranks window.range_min..range_max of its query's hits, after removing the positives and hits within
the margin of the positive's score. Prints mean cosines of positives, mined negatives and the random fills
training would otherwise use.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from embed_lm.config import resolvers as conf_resolvers
from embed_lm.data.msmarco import MsMarcoSource
from embed_lm.data.records import expand_paths
from embed_lm.errors import ConfigError, exit_on_user_error
from embed_lm.inference.mining import (EmbedderModel, MiningWindow, check_output, mine, read_input,
                                       write_output)
from embed_lm.model.distributed import resolve_device

log = logging.getLogger("embed_lm.mine")
conf_resolvers.register()


def build_model(cfg: DictConfig, device: str):
    if cfg.model.sentence_transformer:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(cfg.model.sentence_transformer, device=device)
        model.max_seq_length = cfg.data.max_length
        model.prompts = {"query": cfg.model.query_prompt or "", "document": ""}
        model.default_prompt_name = None
        return _SentenceTransformerModel(model, cfg.batch_size)
    from embed_lm.inference.runs import load_base, load_run

    if cfg.model.run:
        embedder, _ = load_run(cfg.model.run, device=device, max_length=cfg.data.max_length)
    else:
        embedder = load_base(cfg, device=device, max_length=cfg.data.max_length)
    return EmbedderModel(embedder, cfg.task, batch_size=cfg.batch_size)


class _SentenceTransformerModel:
    def __init__(self, model, batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size

    def encode_query(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, prompt_name="query", batch_size=self.batch_size, convert_to_numpy=True,
                                 show_progress_bar=False)

    def encode_document(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, prompt_name="document", batch_size=self.batch_size, convert_to_numpy=True,
                                 show_progress_bar=False)


def input_source(inp: DictConfig) -> MsMarcoSource:
    """The pairs to mine for, read as training reads them (MsMarcoSource); every named file must exist."""
    ids = inp.collection or inp.queries or inp.qrels or inp.triples
    if bool(inp.jsonl) == bool(ids):
        raise ConfigError("input: set input.jsonl (our JSONL), or input.collection + input.queries + input.qrels "
                          "(or input.triples) with input.jsonl=null")
    if inp.jsonl:
        expand_paths(inp.jsonl, "input.jsonl")
        return MsMarcoSource("mine", jsonl=inp.jsonl)
    if not (inp.collection and inp.queries and (inp.qrels or inp.triples)):
        raise ConfigError("input: ids input needs input.collection, input.queries and input.qrels (or "
                          "input.triples: their positives are mined for)")
    for key in ("collection", "queries", "qrels", "triples"):
        if inp[key]:
            expand_paths(inp[key], f"input.{key}")
    return MsMarcoSource("mine", collection=inp.collection, queries=inp.queries,
                         qrels=None if inp.triples else inp.qrels, triples=inp.triples)


def mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def run(cfg: DictConfig) -> dict:
    output = Path(cfg.output).expanduser()
    window = MiningWindow(**cfg.window)
    window.check()
    for key in ("batch_size", "query_block", "corpus_block"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]}: must be an integer >= 1")
    if cfg.embedding_dtype not in ("float16", "float32"):
        raise ConfigError(f"embedding_dtype={cfg.embedding_dtype}: float16 or float32")
    source = input_source(cfg.input)
    check_output(output, ids_input=not cfg.input.jsonl)
    data = read_input(source, cfg.cache_dir)  # before any model loads: a bad line stops here with file:line
    log.info("%d pairs, %d queries, %d corpus passages", len(data.rows), len(np.unique(data.rows[:, 0])),
             len(data.passages))
    device = resolve_device(cfg.device)
    model = build_model(cfg, device)
    work = Path(cfg.work_dir).expanduser() if cfg.work_dir else output.parent
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=".mine-embeddings-") as tmp:
        mined = mine(data, model, window, Path(tmp), cfg.seed, device, cfg.embedding_dtype, cfg.query_block,
                     cfg.corpus_block, cfg.use_faiss)
        lines = write_output(mined, output)
    found = int((mined.negatives >= 0).sum())
    summary = {"pairs": len(data.rows), "negatives": found, "lines": lines,
               "pairs_without_negative": int((mined.negatives < 0).all(1).sum()),
               "cos_positive": mean(mined.positive_scores), "cos_mined_negative": mean(mined.negative_scores),
               "cos_random_fill": mean(mined.random_fill_scores)}
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"\nMined {found} negatives for {summary['pairs']} pairs ({summary['pairs_without_negative']} with none "
          f"in the window) -> {output}\n"
          f"mean cos(query, positive)        {fmt(summary['cos_positive'])}\n"
          f"mean cos(query, mined negative)  {fmt(summary['cos_mined_negative'])}   (ranks {window.range_min}-"
          f"{window.range_max}, margin {window.relative_margin or window.absolute_margin})\n"
          f"mean cos(query, random fill)     {fmt(summary['cos_random_fill'])}   (another pair's positive)\n")
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="mine")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(run, cfg)  # a UserError: one line, exit 2


if __name__ == "__main__":
    main()
