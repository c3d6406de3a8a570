"""Evaluation suites: which mteb tasks `eval=<suite>` runs, task selection with close-match errors, and the offline
check that fails fast (naming the dataset) instead of letting a hub download stall.

    mteb_en   the 56 English MTEB tasks of the paper (mteb's "MTEB(eng, v1)" benchmark), datasets from the hub
    local     embed_lm/eval/local_tasks.py on the bundled sample, fully offline
    beir      one BEIR-layout folder as a retrieval task (embed_lm/eval/beir_task.py)
"""

from __future__ import annotations

import difflib
from pathlib import Path

import mteb

from embed_lm.errors import ConfigError, UserError
from embed_lm.model.backbone import hub_reachable
from embed_lm.eval.beir_task import beir_task
from embed_lm.eval.local_tasks import LOCAL_TASKS

MTEB_EN = "MTEB(eng, v1)"


class UnknownTaskError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class DatasetUnavailableError(UserError, RuntimeError):
    pass


def select(tasks: list, names: list[str] | None, suite: str) -> list:
    if not names:
        return tasks
    by_name = {t.metadata.name: t for t in tasks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        hints = "; ".join(f"{n!r}: did you mean {difflib.get_close_matches(n, by_name, n=3, cutoff=0.4) or '?'}"
                          for n in unknown)
        raise UnknownTaskError(f"eval.tasks: unknown task(s) for suite {suite}: {hints}. "
                               f"Available: {', '.join(sorted(by_name))}")
    return [by_name[n] for n in names]


def dataset_cached(repo: str) -> bool:
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}").is_dir()


def check_datasets_reachable(tasks: list, probe_timeout_s: float = 3.0) -> None:
    """Raise at once, naming the datasets, when some are not cached and the hub cannot be reached."""
    from huggingface_hub import constants

    missing = sorted({t.metadata.dataset["path"] for t in tasks if not dataset_cached(t.metadata.dataset["path"])})
    if not missing:
        return
    why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else (
        None if hub_reachable(constants.ENDPOINT, probe_timeout_s) else f"{constants.ENDPOINT} is unreachable")
    if why:
        names = [t.metadata.name for t in tasks if t.metadata.dataset["path"] in missing]
        raise DatasetUnavailableError(
            f"{len(missing)} MTEB dataset(s) are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (tasks {', '.join(names[:5])}"
            f"{' ...' if len(names) > 5 else ''}). Run once where the hub is reachable to fill the cache, or use "
            "eval=local / eval=beir offline.")


def build_tasks(suite: str, tasks: list[str] | None = None, sample_dir: str | None = None,
                path: str | None = None, split: str = "test", instruction: str | None = None,
                name: str | None = None) -> list:
    if suite == "mteb_en":
        selected = select(list(mteb.get_benchmark(MTEB_EN).tasks), tasks, suite)
        check_datasets_reachable(selected)
        return selected
    if suite == "local":
        return select([cls(sample_dir) for cls in LOCAL_TASKS], tasks, suite)
    if suite == "beir":
        if not path or not instruction:
            raise ConfigError("eval=beir needs eval.path=<BEIR folder> and eval.instruction=\"<task definition>\"")
        return [beir_task(path, split, instruction, name)]
    raise ConfigError(f"unknown eval suite {suite!r}; choose mteb_en, local or beir")
