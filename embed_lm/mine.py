"""Mine hard negatives for training pairs that have none, as the paper does (configured by conf/mine.yaml).

    python -m embed_lm.mine                                               # the bundled sample, all-MiniLM-L6-v2
    python -m embed_lm.mine model.run=outputs/train/runs/<run> input.collection=... input.queries=... \\
        input.qrels=... output=/data/msmarco/triples.mined.ids.tsv       # a trained run mines MS-MARCO
    python -m embed_lm.mine model.sentence_transformer=<name or path> input.jsonl=pairs.jsonl output=mined.jsonl
    python -m embed_lm.train data.sources.msmarco.triples=<output>        # train on the mined triples

An embedder (a base model, a trained run, or a sentence-transformers model) embeds queries (with the task's
instruction) and the corpus; each pair's negatives are sampled from ranks window.range_min..range_max of its
query's hits after removing the positives and hits within the margin of the positive's score. Prints mean cosines
of positives, mined negatives and the random fills training would otherwise use.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import hydra
from omegaconf import DictConfig

from embed_lm.errors import ConfigError, exit_on_user_error
from embed_lm.config import resolvers as conf_resolvers
from embed_lm.inference.mining import (EmbedderModel, MiningWindow, mine, read_jsonl_pairs, read_msmarco_ids,
                                  write_jsonl, write_msmarco_triples)
from embed_lm.model.distributed import resolve_device

log = logging.getLogger("embed_lm.mine")
conf_resolvers.register()


def build_model(cfg: DictConfig):
    device = resolve_device(cfg.device)
    if cfg.model.sentence_transformer:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(cfg.model.sentence_transformer, device=device)
        model.max_seq_length = cfg.data.max_length
        if cfg.model.query_prompt:
            model.prompts = {"query": cfg.model.query_prompt}
            model.default_prompt_name = None
        return model
    from embed_lm.inference.runs import load_base, load_run

    if cfg.model.run:
        embedder, _ = load_run(cfg.model.run, device=device, max_length=cfg.data.max_length)
    else:
        embedder = load_base(cfg, device=device, max_length=cfg.data.max_length)
    return EmbedderModel(embedder, cfg.task, batch_size=cfg.batch_size)


def run(cfg: DictConfig) -> dict[str, float]:
    inp, output = cfg.input, Path(cfg.output)
    pairs = (read_jsonl_pairs(inp.jsonl) if inp.jsonl else
             read_msmarco_ids(inp.collection, inp.queries, inp.qrels, inp.triples))
    if output.suffix == ".tsv" and inp.jsonl:
        raise ConfigError(f"output={output}: id triples need ids input (input.collection/queries/qrels); "
                         "write .jsonl for JSONL input")
    log.info("%d pairs, %d queries, %d corpus passages", len(pairs.rows), len(pairs.queries), len(pairs.corpus))
    mined = mine(pairs, build_model(cfg), MiningWindow(**cfg.window), cfg.seed, cfg.use_faiss)
    (write_jsonl if output.suffix == ".jsonl" else write_msmarco_triples)(mined, output)
    summary = {"pairs": len(pairs.rows), "negatives": len(mined.triples),
               "cos_positive": statistics.fmean(mined.positive_scores),
               "cos_mined_negative": statistics.fmean(mined.negative_scores),
               "cos_random_fill": statistics.fmean(mined.random_fill_scores)}
    print(f"\nMined {summary['negatives']} negatives for {summary['pairs']} pairs -> {output}\n"
          f"mean cos(query, positive)        {summary['cos_positive']:.4f}\n"
          f"mean cos(query, mined negative)  {summary['cos_mined_negative']:.4f}   (ranks {cfg.window.range_min}-"
          f"{cfg.window.range_max}, margin {cfg.window.relative_margin or cfg.window.absolute_margin})\n"
          f"mean cos(query, random fill)     {summary['cos_random_fill']:.4f}   (another pair's positive)\n")
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="mine")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(run, cfg)  # a UserError: one line, exit 2


if __name__ == "__main__":
    main()
