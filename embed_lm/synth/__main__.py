"""Write the paper's synthetic training data with an LLM (conf/synth.yaml, conf/generator/*.yaml).

    export OPENAI_API_KEY=...           # read from the environment only; never stored in a config or log
    python -m embed_lm.synth generator=openai model=gpt-4o-mini n_tasks=100 n_examples=1000 out=data/synth/
    python -m embed_lm.synth generator=openai model=<served name> generator.base_url=http://localhost:8000/v1
    python -m embed_lm.synth generator=hf_local model=/models/Mistral-7B-Instruct-v0.3 n_examples=50
    python -m embed_lm.synth model=gpt-4o-mini dry_run=true        # sample prompts + request count, sends nothing
    python -m embed_lm.synth.report data/synth/                     # counts, languages, length histograms
    python -m embed_lm.train data.sources.synthetic.paths='data/synth/*.jsonl'

Run the same command again to resume a stopped or killed run; summary.json holds counts, tokens and cost.
Exit status: 0 done (or partly done: rerun to finish), 1 the run stopped or no request succeeded (the message names
the server and the last error), 2 a configuration error, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from embed_lm.errors import TRACEBACK_ENV, USER_ERROR_EXIT, one_line, user_error_of
from embed_lm.synth.pipeline import Plan, SynthError, dry_run, run
from embed_lm.synth.summary import format_summary

log = logging.getLogger("embed_lm.synth")


def synth(cfg: DictConfig) -> dict | None:
    plan = Plan(kinds=tuple(cfg.kinds), n_tasks=cfg.n_tasks, n_examples=cfg.n_examples,
                tasks_per_request=cfg.tasks_per_request, seed=cfg.seed, language=cfg.language,
                task_dedup_threshold=cfg.task_dedup_threshold)
    if cfg.dry_run:
        print(dry_run(cfg.out, plan))
        return None
    if OmegaConf.is_missing(cfg, "model"):
        raise SynthError("name the model: model=<name> (generator=openai: a model the server serves; "
                         "generator=hf_local: a local folder)")
    generator = instantiate(cfg.generator)  # a refusal inside (missing key or model path): one line
    log.info("generator %s -> %s", generator.describe(), cfg.out)
    factor = getattr(generator, "price_factor", 1.0)  # openai_batch: the Batch API's discount
    summary = run(generator, cfg.out, plan, concurrency=cfg.concurrency,
                  prices_per_1m=(cfg.prices_per_1m.input * factor, cfg.prices_per_1m.output * factor),
                  max_consecutive_errors=cfg.max_consecutive_errors, progress=cfg.progress,
                  describe=generator.describe(), config=OmegaConf.to_container(cfg, resolve=True))
    print(f"\n{format_summary(summary)}\nwrote {cfg.out} (summary.json; report: python -m embed_lm.synth.report "
          f"{cfg.out})")
    return summary


def leave(code: int) -> None:
    """Exit now, without waiting for requests still in flight (their answers were never written: the next run
    sends them again). Output files and summary.json are already closed and complete."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="synth")
def main(cfg: DictConfig) -> None:
    for name in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request would bury the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        synth(cfg)
    except Exception as e:  # a UserError: one line; EMBED_LM_TRACEBACK=1 / HYDRA_FULL_ERROR=1 show the traceback
        user = user_error_of(e)
        if user is None or any(os.environ.get(name) == "1" for name in TRACEBACK_ENV):
            raise
        summary = getattr(user, "summary", None)  # the run stopped or nothing succeeded: what was done and failed
        if summary:
            print(f"\n{format_summary(summary)}")
        print(f"error: {one_line(user)}", file=sys.stderr)
        leave(1 if summary else USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume into {cfg.out}", file=sys.stderr)
        leave(130)


if __name__ == "__main__":
    main()
