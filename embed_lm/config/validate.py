"""Every config value checked before anything heavy loads: one table of rules, one rule per option.

    from embed_lm.config import validate
    validate.check_train(cfg)       # python -m embed_lm.train calls it first: every value in its range
    validate.check_train_files(cfg) # then, after the (seconds) model lookup: every data file exists and is readable
    validate.check_evaluate(cfg)    # python -m embed_lm.evaluate

A value outside its range raises ConfigError naming the option, the value and the allowed range, e.g.
`data.batch_size=0: must be an integer >= 1 (queries per device and step)`; the entry points print it and exit 2.
Data files (globs included) must exist and be readable; the model parts must be the project's own (the same
allow-list that loading a run folder uses, embed_lm/model/registry.py).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embed_lm.errors import ConfigError
from embed_lm.model.backbone import TinyBackbone, tiny_dtype
from embed_lm.model.pooling import Pooling
from embed_lm.model.registry import PARTS


@dataclass(frozen=True)
class Rule:
    key: str  # dotted option; "*" matches every key (or list index) at that level: data.sources.*.ratio
    kind: str  # int | number | bool | str | choice | files | dir | tokens (an int or "auto")
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # True: min itself is not allowed
    max_open: bool = False
    nullable: bool = False
    required: bool = True  # False: the option may be absent from the config
    choices: tuple = ()
    meaning: str = ""

    def allowed(self) -> str:
        if self.kind == "choice":
            text = f"one of {', '.join(map(str, self.choices))}"
        elif self.kind in ("files", "dir"):
            text = "an existing, readable file (a glob or a list of globs)" if self.kind == "files" else \
                "an existing folder"
        else:
            text = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
                    "tokens": "auto or an integer"}[self.kind]
            lo = None if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
            hi = None if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
            if lo and hi:
                text += f" in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"
            elif lo or hi:
                text += f" {lo or hi}"
        if self.nullable:
            text += " or null"
        return text + (f" ({self.meaning})" if self.meaning else "")

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks the rule, or None."""
        if value is None:
            return None if self.nullable else "must be set"
        if self.kind == "choice":
            return None if value in self.choices else "not allowed"
        if self.kind == "bool":
            return None if isinstance(value, bool) else "not a boolean"
        if self.kind == "str":
            return None if isinstance(value, str) else "not a string"
        if self.kind == "files":
            return files_problem(value)
        if self.kind == "dir":
            return None if Path(str(value)).expanduser().is_dir() else "no such folder"
        if self.kind == "tokens" and value == "auto":
            return None
        numeric = (int,) if self.kind in ("int", "tokens") else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"not {'a number' if self.kind == 'number' else 'an integer'}"
        too_low = self.min is not None and (value <= self.min if self.min_open else value < self.min)
        too_high = self.max is not None and (value >= self.max if self.max_open else value > self.max)
        return "out of range" if too_low or too_high else None


def files_problem(value: Any) -> str | None:
    patterns = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else None
    if not patterns or not all(isinstance(p, str) for p in patterns):
        return "not a path, glob or list of them"
    for pattern in patterns:
        matches = glob.glob(str(Path(pattern).expanduser()))
        if not matches:
            return f"no file matches {pattern}"
        for match in matches:
            if not Path(match).is_file():
                return f"{match} is not a file"
            if not os.access(match, os.R_OK):
                return f"{match} is not readable (permissions)"
    return None


def targets(section: str) -> tuple[str, ...]:
    return tuple(sorted(PARTS[section]))


DATA_FILES = ("paths", "jsonl", "collection", "queries", "qrels", "triples")
TINY_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "max_position_embeddings")
MODEL_RULES = [
    Rule("backbone._target_", "choice", choices=targets("backbone")),
    Rule("backbone.name", "str"),
    Rule("backbone.size", "choice", choices=("full", "tiny")),
    Rule("backbone.append_eos", "bool"),
    Rule("backbone.padding_side", "choice", choices=("left", "right")),
    Rule("backbone.dtype", "choice", choices=("auto", "float32", "bfloat16", "float16"), required=False),
    Rule("backbone.trust_remote_code", "bool", required=False),
    Rule("backbone.probe_timeout_s", "number", min=0, min_open=True, required=False),
    *[Rule(f"backbone.tiny.{k}", "int", min=1, required=False) for k in TINY_INTS],
    Rule("backbone.tiny.sliding_window", "int", min=1, nullable=True, required=False),
    Rule("pooling._target_", "choice", choices=targets("pooling")),
    Rule("pooling.name", "choice", choices=tuple(sorted(Pooling.FUNCTIONS))),
    Rule("pooling.exclude_instruction", "bool", required=False),
    Rule("instruction_style._target_", "choice", choices=targets("instruction_style")),
]
TRAIN_RULES = [
    *MODEL_RULES,
    Rule("seed", "int"),
    Rule("data.batch_size", "int", min=1, meaning="queries per device and step"),
    Rule("data.eval_batch_size", "int", min=1),
    Rule("data.max_length", "int", min=2, meaning="tokens per text, the appended EOS included"),
    Rule("data.negatives_per_query", "int", min=0, meaning="hard negatives per query"),
    Rule("data.num_workers", "int", min=0),
    Rule("data.single_source_batches", "bool"),
    Rule("data.sources.*.ratio", "number", min=0, min_open=True, nullable=True, required=False,
         meaning="null = in proportion to the source's size"),
    Rule("data.sources.*.skip_invalid", "bool", required=False),
    Rule("data.sources.*.max_examples", "int", min=1, nullable=True, required=False),
    *[Rule(f"data.sources.*.{k}", "files", nullable=True, required=False) for k in DATA_FILES],
    Rule("data.dev.path", "dir", required=False),
    Rule("data.test.path", "dir", required=False),
    Rule("data.dev.max_queries", "int", min=1, nullable=True, required=False),
    Rule("data.test.max_queries", "int", min=1, nullable=True, required=False),
    Rule("lora_rank.r", "int", min=1, nullable=True, meaning="LoRA rank; null = full fine-tuning (lora_rank=full)"),
    Rule("lora.alpha", "number", min=0, min_open=True),
    Rule("lora.dropout", "number", min=0, max=1, max_open=True),
    Rule("gradient_checkpointing", "bool"),
    Rule("optimizer.lr", "number", min=0, min_open=True),
    Rule("optimizer.weight_decay", "number", min=0),
    Rule("optimizer.warmup_steps", "int", min=0),
    Rule("optimizer.betas.*", "number", min=0, max=1, max_open=True),
    Rule("optimizer.grad_clip", "number", min=0, min_open=True, nullable=True, meaning="null = no clipping"),
    Rule("loss.temperature", "number", min=0, min_open=True),
    Rule("loss.mini_batch_size", "int", min=1, required=False),
    Rule("loss.gather_across_devices", "choice", choices=("auto", True, False), required=False,
         meaning="auto = on when more than one process trains"),
    Rule("loss.mini_batch_tokens", "tokens", min=1, nullable=True, required=False,
         meaning="token positions per pass; auto = chosen from the device"),
    Rule("loss.micro_batch_size", "int", min=1, nullable=True, required=False),
    Rule("loss.micro_batch_tokens", "tokens", min=1, nullable=True, required=False,
         meaning="token positions per pass; auto = chosen from the device"),
    Rule("packing", "bool", required=False),
    Rule("data.pretokenize", "bool", required=False),
    Rule("loss.local_loss", "bool", required=False),
    Rule("trainer.max_steps", "int", min=-1, meaning="-1 = no limit"),
    Rule("trainer.max_epochs", "int", min=-1, nullable=True, required=False),
    Rule("trainer.accumulate_grad_batches", "int", min=1, required=False),
    Rule("trainer.log_every_n_steps", "int", min=1, required=False),
    Rule("trainer.limit_train_batches", "number", min=0, min_open=True, required=False),
    Rule("callbacks.model_checkpoint.every_n_train_steps", "int", min=1, nullable=True, required=False),
    Rule("test_before_training", "bool"),
    Rule("test_after_training", "bool"),
    Rule("ckpt_path", "str", nullable=True, required=False),
    Rule("resume.allow_changes.*", "str", required=False),
]
EVALUATE_RULES = [
    Rule("batch_size", "int", min=1),
    Rule("max_tokens", "int", min=1, nullable=True, meaning="token budget per batch"),
    Rule("max_length", "int", min=2, nullable=True, meaning="null = the run's data.max_length"),
    Rule("overwrite", "bool"),
    Rule("raise_error", "bool"),
    Rule("trust_remote_code", "bool", required=False),
    Rule("eval.suite", "choice", choices=("beir", "local", "mteb_en")),
    Rule("eval.path", "dir", required=False),
]
BASE_MODEL_RULES = [*MODEL_RULES, Rule("data.max_length", "int", min=2)]  # evaluate run=null: a base model


def lookup(tree: Any, parts: list[str], prefix: str = "") -> list[tuple[str, Any, bool]]:
    """(dotted key, value, present) for every key matching `parts` ("*" = any key or list index)."""
    if not parts:
        return [(prefix[:-1], tree, True)]
    head, rest = parts[0], parts[1:]
    if isinstance(tree, dict):
        keys = list(tree) if head == "*" else [head] if head in tree else []
        if not keys:
            return [] if head == "*" else [(prefix + ".".join(parts), None, False)]
        return [m for k in keys for m in lookup(tree[k], rest, f"{prefix}{k}.")]
    if isinstance(tree, list) and head == "*":
        return [m for i, v in enumerate(tree) for m in lookup(v, rest, f"{prefix}{i}.")]
    return []  # a parent is null or not a mapping: its own rule speaks for it


FILE_KINDS = ("files", "dir")


def check(cfg: DictConfig | dict, rules: list[Rule]) -> None:
    """Raise ConfigError for the first option that breaks its rule."""
    tree = resolve(cfg)
    for rule in rules:
        for key, value, present in lookup(tree, rule.key.split(".")):
            if not present:
                if rule.required:
                    raise ConfigError(f"{key} is missing: set it to {rule.allowed()}")
                continue
            problem = rule.problem(value)
            if problem:
                raise ConfigError(f"{key}={value!r}: {problem}; must be {rule.allowed()}")


def resolve(cfg: DictConfig | dict) -> dict:
    if isinstance(cfg, dict):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {e}".replace("\n", " ")) from e


def check_train(cfg: DictConfig) -> None:
    """The training config's values, before any model or data loads (files: check_train_files)."""
    tree = resolve(cfg)
    sources = (tree.get("data") or {}).get("sources")
    if not isinstance(sources, dict) or not any(v is not None for v in sources.values()):
        raise ConfigError("data.sources is empty: configure at least one training source (e.g. data=sample)")
    check(tree, [r for r in TRAIN_RULES if r.kind not in FILE_KINDS])
    backbone = tree["backbone"]
    if backbone["size"] == "tiny":
        if not backbone.get("tiny"):
            raise ConfigError(f"backbone.size=tiny: backbone '{backbone['name']}' has no tiny shape (backbone.tiny)")
        if backbone.get("architecture") not in TinyBackbone.ARCHITECTURES:
            raise ConfigError(f"backbone.architecture={backbone.get('architecture')!r}: size=tiny needs one of "
                              f"{', '.join(TinyBackbone.ARCHITECTURES)}")
        tiny_dtype(backbone["name"], backbone.get("dtype", "auto"), backbone["tiny"].get("dtype"))  # one dtype
    if backbone["size"] == "full" and not isinstance(backbone.get("model_name_or_path"), str):
        raise ConfigError("backbone.model_name_or_path must be a hub id or a local model folder")
    if tree.get("eval") is not None:  # the evaluation after training: checked now, not after hours of training
        check({**tree.get("evaluation", {}), "eval": tree["eval"]}, EVALUATE_RULES)
    betas = tree["optimizer"]["betas"]
    if not isinstance(betas, list) or len(betas) != 2:
        raise ConfigError(f"optimizer.betas={betas!r}: must be two numbers in [0, 1), e.g. [0.9,0.999]")


def check_train_files(cfg: DictConfig) -> None:
    """Every data file of the training config exists and is readable (globs: every match)."""
    check(cfg, [r for r in TRAIN_RULES if r.kind in FILE_KINDS])


def check_evaluate(cfg: DictConfig) -> None:
    """The evaluation config, before any model loads (run=null: the base model's options too)."""
    tree = resolve(cfg)
    check(tree, EVALUATE_RULES + ([] if tree.get("run") else BASE_MODEL_RULES))
